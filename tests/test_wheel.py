"""The wheel: `pip wheel .` on a copy of the source tree builds one that holds every file of the package, and
installed into a fresh venv, it gives a working `vitlab` run from elsewhere, with no source tree on the path.

Installing torch and the other dependencies into the venv would take minutes (torch alone ~30 s from this disk),
so the venv reuses this environment's installed dependencies through a .pth file (site.addsitedir on a folder of
links to every entry of this site-packages except vitlab's own editable install), and pip installs the wheel
with --no-index: a dependency the wheel declares but the venv lacks fails the install. VITLAB_SKIP_WHEEL=1 skips.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import vitlab

pytestmark = pytest.mark.skipif(os.environ.get("VITLAB_SKIP_WHEEL") == "1", reason="VITLAB_SKIP_WHEEL=1")

ROOT = Path(__file__).resolve().parents[1]
SOURCE_IGNORED = ("__pycache__", "*.pyc", "*.egg-info")


def sh(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{cmd}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def package_files() -> set[str]:
    """Every file of src/vitlab a user needs, as a path inside the wheel (vitlab/...)."""
    src = ROOT / "src"
    return {p.relative_to(src).as_posix() for p in (src / "vitlab").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def build_wheel(tmp: Path) -> Path:
    """`pip wheel` on a copy of what a clone holds (src/, pyproject.toml, README.md): the checkout stays clean
    and no stale build/ or egg-info of it can leak into the wheel."""
    import shutil

    tree = tmp / "tree"
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns(*SOURCE_IGNORED))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    # no build isolation: setuptools comes from this environment, so nothing is downloaded
    sh(sys.executable, "-m", "pip", "wheel", tree, "--no-deps", "--no-build-isolation", "--no-index", "-q",
       "-w", tmp / "dist")
    (wheel,) = (tmp / "dist").glob("vitlab-*.whl")
    return wheel


def dependencies_overlay(tmp: Path) -> Path:
    """A folder of links to this environment's site-packages entries, vitlab's own (the editable install that
    points at src/) left out."""
    site = Path(sysconfig.get_paths()["purelib"])
    overlay = tmp / "deps"
    overlay.mkdir()
    for entry in site.iterdir():
        if entry.name.lower().startswith(("vitlab", "__editable__.vitlab", "__editable___vitlab")):
            continue
        (overlay / entry.name).symlink_to(entry)
    return overlay


def fresh_venv(tmp: Path, overlay: Path) -> Path:
    venv = tmp / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", venv)   # the base interpreter, nothing installed
    purelib = Path(sh(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                   .strip())
    (purelib / "zz_vitlab_test_deps.pth").write_text(f"import site; site.addsitedir({str(overlay)!r})\n")
    return venv


def test_wheel_installs_and_runs_without_the_source_tree(tmp_path):
    wheel = build_wheel(tmp_path)
    assert wheel.name == f"vitlab-{vitlab.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    in_package = {n for n in names if n.startswith("vitlab/")}
    assert in_package == package_files()        # every module and every data file, nothing else
    assert not {n for n in names if n.split("/")[0] in ("tests", "benchmarks", "src")}
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as z:
        assert "vitlab = vitlab.cli:main" in z.read(entry_points).decode()

    venv = fresh_venv(tmp_path, dependencies_overlay(tmp_path))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    python = venv / "bin" / "python"
    sh(python, "-m", "pip", "install", "--no-index", "--no-build-isolation", "-q", wheel, env=env)

    elsewhere = tmp_path / "elsewhere"          # no src/ here, none above it
    elsewhere.mkdir()
    where = sh(python, "-c", "import sys, torch, vitlab; print(vitlab.__file__); print(torch.__version__); "
               "print(any(p.startswith(sys.argv[1]) for p in sys.path))", str(ROOT), cwd=elsewhere, env=env)
    vitlab_file, torch_version, root_on_path = where.split()
    assert Path(vitlab_file).is_relative_to(venv), vitlab_file        # the installed copy, not src/
    assert torch_version == __import__("torch").__version__ and root_on_path == "False"

    vitlab_cli = venv / "bin" / "vitlab"        # the console script the wheel declares
    assert sh(vitlab_cli, "--version", cwd=elsewhere, env=env).strip() == f"vitlab {vitlab.__version__}"
    listed = [line.split()[0] for line in sh(vitlab_cli, "models", cwd=elsewhere, env=env).splitlines()]
    assert listed == vitlab.list_models() and "vit_base_patch16_224" in listed
    shape = sh(python, "-c", "import torch, vitlab; m = vitlab.create_model('vit_micro_patch2_8').eval(); "
               "print(tuple(m(torch.zeros(2, 3, 8, 8)).shape))", cwd=elsewhere, env=env)
    import torch

    expected = tuple(vitlab.create_model("vit_micro_patch2_8").eval()(torch.zeros(2, 3, 8, 8)).shape)
    assert shape.strip() == str(expected)
