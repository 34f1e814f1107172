"""What the studies share: the data they train on, seeds, the rerun command, training one model with the
library's trainer, plots with error bars, and the end of a run (finish: JSON, figures, verdict lines). (A leading
underscore: not a study itself.)"""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..checks import int_arg
from ..io import write_json
from .verdict import format_mean_std, mean_std

log = logging.getLogger(__name__)

QUICK_NOTE = "quick mode: a smoke test of the code path (tiny data, a step or two of training); no verdict"


def add_seed_arguments(p: argparse.ArgumentParser, default_seeds: int = 3) -> None:
    """--seeds, --seed and --quick, the same in every study."""
    p.add_argument("--seeds", type=int_arg(at_least=1), default=default_seeds,
                   help=f"independent runs (seeds seed..seed+N-1); the verdict needs >= 2 (default {default_seeds})")
    p.add_argument("--seed", type=int_arg(at_least=0), default=0, help="first seed")
    p.add_argument("--quick", action="store_true", help="a smoke test in seconds: tiny data, no verdict")


def seed_list(args: argparse.Namespace) -> list[int]:
    """The seeds a run uses: one in quick mode (a smoke test), --seeds otherwise."""
    return [args.seed + i for i in range(1 if args.quick else args.seeds)]


def quick_args(args: argparse.Namespace, name: str, add_arguments: Any, **overrides: Any) -> argparse.Namespace:
    """args with quick mode's small settings (and --jobs 1: a smoke test's runs take less than a process start);
    the rerun command stays the one the user typed."""
    one_job = {"jobs": 1} if hasattr(args, "jobs") else {}
    return argparse.Namespace(**{**vars(args), **one_job, **overrides,
                                 "_command": command_line(name, args, add_arguments)})


def command_line(name: str, args: argparse.Namespace, add_arguments: Any) -> str:
    """The `vitlab study NAME ...` line that reruns this study: every option that differs from its default."""
    if getattr(args, "_command", None):
        return args._command
    p = argparse.ArgumentParser(add_help=False)
    add_arguments(p)
    parts = ["vitlab", "study", name]
    for action in p._actions:
        if not action.option_strings or not hasattr(args, action.dest):
            continue
        value, default = getattr(args, action.dest), action.default
        if value == default or value is None:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, ",".join(map(str, value))]
        else:
            parts += [flag, str(value)]
    out = getattr(args, "out", None)
    if out and out != f"runs/study-{name}":
        parts += ["--out", str(out)]
    return " ".join(parts)


def shapes_folder(root: Path, size: int, per_class: int, val_per_class: int, seed: int = 0,
                  objects: str = "small") -> str:
    """An ImageFolder (train/<class>/, val/<class>/) of the generated `shapes` at `size` px (object sizes
    `objects`: data.shapes.OBJECT_RADII); kept when present.

    The studies train through the library's trainer, which reads data specs; a folder lets them choose the
    number of images (the `shapes` spec has a fixed 500 per class)."""
    from PIL import Image

    from ..data.shapes import SHAPE_CLASSES, generate_shapes

    root = Path(root)
    done = root / ".complete"
    if done.is_file():
        return str(root)
    for split, n, stream in (("train", per_class, 0), ("val", val_per_class, 1)):
        images = generate_shapes(n, size, np.random.default_rng([seed, stream]), objects=objects)
        for i in range(len(images)):
            image, label = images[i]
            folder = root / split / SHAPE_CLASSES[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
    done.write_text("")
    return str(root)


def train(model: str, data: str, out: Path, *, epochs: int, seed: int, img_size: int | None = None,
          quick: bool = False, **extra: Any) -> dict[str, Any]:
    """One run of vitlab.train.run_training with the studies' recipe (short warm-up, no stochastic depth, no
    label smoothing); returns its metrics. Quick runs skip the closing pictures (seconds each)."""
    from ..train import TrainConfig, run_training

    # lr 5e-4 and no random crop: the recipe under which a micro ViT learns shapes from scratch (README: ~47%
    # after 30 epochs of 3000 images); at 2e-3 it stays at chance for 20 epochs
    recipe = {"warmup_epochs": min(2.0, epochs / 5), "drop_path": 0.0, "label_smoothing": 0.0, "lr": 5e-4,
              "crop_scale": 1.0, "batch_size": 32, "weight_decay": 0.05, "report": not quick}
    model_args = {**vit_init(model), **(extra.pop("model_args", None) or {})}
    cfg = TrainConfig(model=model, data=data, out=str(out), epochs=epochs, seed=seed, img_size=img_size,
                      model_args=model_args, **{**recipe, **extra})
    log.info("training %s (%d epochs, seed %d) into %s", model, epochs, seed, out)
    return run_training(cfg, overwrite=True)


def default_jobs() -> int:
    """Training runs at a time when a study does not say: the cores, at most 4 (each run then gets one core)."""
    return max(1, min(4, os.cpu_count() or 1))


def add_jobs_argument(p: argparse.ArgumentParser) -> None:
    """--jobs, in the studies whose training runs are independent of each other (train_all)."""
    p.add_argument("--jobs", type=int_arg(at_least=1), default=default_jobs(),
                   help="training runs at a time, each in its own process with its share of the threads "
                        f"(default: the cores, at most 4; here {default_jobs()}); 1 trains them in turn in this "
                        "process. The numbers do not depend on it")


def train_all(runs: Sequence[Mapping[str, Any]], jobs: int = 1,
              fn: Callable[..., dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """[fn(**run) for run in runs] (fn: `train`, the studies' recipe, unless given; a module-level function, so
    that a spawned process can import it): the metrics of each run, in the order given.

    jobs > 1 trains min(jobs, len(runs)) at a time, each in a fresh (spawned) process with this process's torch
    threads divided among them (at least 1). The runs must not read each other's output. A run is seeded by its
    own config and its data order does not depend on the process, so the results are those of jobs=1 at the same
    thread count; a failed run raises here once the runs already started have ended."""
    runs = [dict(run) for run in runs]
    fn = fn or train
    jobs = min(jobs, len(runs))
    if jobs <= 1:
        return [fn(**run) for run in runs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    threads = max(1, torch.get_num_threads() // jobs)
    level = logging.getLogger().getEffectiveLevel()
    log.info("%s: %d runs, %d at a time (%d thread%s each)", fn.__name__, len(runs), jobs, threads,
             "s" * (threads > 1))
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_setup,
                             initargs=(threads, level)) as pool:
        return list(pool.map(_call, [fn] * len(runs), runs))


def _worker_setup(threads: int, level: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=level, format="%(message)s")


def _call(fn: Callable[..., dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    return fn(**run)


def vit_init(model: str) -> dict[str, Any]:
    """{"weight_init": "jax"} for a model of the ViT family (its config has the field: ViT, DeiT, CPVT, hybrids),
    else {}. The original ViT's xavier init scales with the width; timm's truncated normal 0.02 is sized for
    dim 768 and leaves a dim-64 ViT on a flat start for hundreds of steps (benchmarks/results/vit_plateau/)."""
    from ..variants import default_config

    return {"weight_init": "jax"} if "weight_init" in default_config(model) else {}


def summary(values: Sequence[float], digits: int = 2) -> dict[str, Any]:
    """mean, std, per-seed values and the 'mean ± std' text of one table cell."""
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "per_seed": [float(v) for v in values], "text": format_mean_std(values, digits)}


def claim(statement: str, source: str, result: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A claim's JSON entry: the lecture's statement, its paper, and the verdict.compare result."""
    return {"statement": statement, "source": source, **result, **extra}


def finish(results: dict[str, Any], out: Path | str, name: str, *, log: logging.Logger,
           plots: Mapping[str, Callable[[Path], Any]] | None = None, difference: str | None = "%+.2f",
           line: str | None = None, prefix: str | None = None) -> dict[str, Any]:
    """The end of every study's run; returns `results`.

    1. results -> out/<name>.json, dashes as underscores (`data-efficiency` -> data_efficiency.json), atomically;
       written first, so a figure that fails leaves the numbers;
    2. each plot: plots[file](out / file), in order;
    3. one line on `log` (the study's own logger) per entry of results["claims"], if any:
       "<prefix or name>: <statement>: <verdict> (difference <difference>)", `difference` being the %-format of
       claim["difference"] with its unit ("%+.2f points"); None leaves the parenthesis out. `line` replaces
       everything after the prefix with a %-format of the claim's own keys ("best %(best)s: %(verdict)s").
    Studies whose verdict is not a "claims" list (dino, segmentation) log their own lines after this."""
    out = Path(out)
    write_json(out / f"{name.replace('-', '_')}.json", results)
    for file, draw in (plots or {}).items():
        draw(out / file)
    head = prefix or name
    for c in results.get("claims") or ():
        if line is not None:
            log.info(f"{head}: {line}", c)                        # one mapping argument: %(key)s of the claim
        elif difference is None:
            log.info(f"{head}: %s: %s", c["statement"], c["verdict"])
        else:
            log.info(f"{head}: %s: %s (difference {difference})", c["statement"], c["verdict"], c["difference"])
    return results


def errorbar_plot(ax: Any, x: Sequence[float], per_seed: Sequence[Sequence[float]], label: str, **style: Any) -> None:
    """Mean over seeds at each x with a ±1 std error bar; per_seed is (points, seeds)."""
    means = [mean_std(v)[0] for v in per_seed]
    errs = [mean_std(v)[1] or 0.0 for v in per_seed]
    ax.errorbar(list(x), means, yerr=errs, marker="o", markersize=3, capsize=3, label=label, **style)


def save(fig: Any, path: Path) -> None:
    from ..explain.plots import save_figure

    save_figure(fig, path)


def quick_title(title: str, quick: bool) -> str:
    return title + ("  [quick: smoke test, no verdict]" if quick else "")


QUICK_SIZE, QUICK_TRAIN, QUICK_VAL = 16, 6, 4        # quick mode's data: 36 train / 24 val images of 16 px


def add_objects_argument(p: argparse.ArgumentParser, default: str = "large") -> None:
    """--objects: the size of the generated shapes (data.shapes.OBJECT_RADII), in the studies that draw them."""
    from ..data.shapes import OBJECT_RADII

    p.add_argument("--objects", choices=sorted(OBJECT_RADII), default=default,
                   help=f"object size of the generated shapes (default {default}): large spans 60-90%% of the side, "
                        "small 30-56%%, on which a micro ViT stays below the studies' floor for thousands of steps")


def study_data(args: argparse.Namespace, out: Path, size: int, per_class: int, val_per_class: int = 100) -> str:
    """The data spec a study trains on: a shapes folder under `out` (quick: a tiny one), or args.data as given.
    The shapes' object size is args.objects where the study has the option (add_objects_argument), else small."""
    objects = getattr(args, "objects", "small")
    if args.quick:
        return shapes_folder(out / f"quick-data{objects_suffix(objects)}", QUICK_SIZE, QUICK_TRAIN, QUICK_VAL,
                             objects=objects)
    if args.data == "shapes":
        return shapes_folder(out / f"data-shapes{size}-{per_class}{objects_suffix(objects)}", size, per_class,
                             val_per_class, objects=objects)
    return args.data


def objects_suffix(objects: str) -> str:
    """The folder names of the default (small) objects are those from before the option existed."""
    return "" if objects == "small" else f"-{objects}"
