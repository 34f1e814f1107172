"""Attention benchmark: the memory probe measures real allocations; full attention's memory grows ~n^2,
Linformer's ~n."""
from __future__ import annotations

import json

import pytest
import torch

from vitlab.bench.attention import bench_one, grid_for, growth_exponents, peak_memory_bytes
from vitlab.cli import main


def test_peak_memory_probe_sees_the_allocator():
    def one_buffer() -> None:
        a = torch.ones(1024, 1024)            # 4 MiB
        del a
        b = torch.ones(1024, 1024)            # reuses the freed room: the peak stays one buffer
        del b

    def two_buffers() -> None:
        a = torch.ones(1024, 1024)
        b = torch.ones(1024, 1024)            # both alive: 8 MiB
        del a, b

    mib = 2**20
    assert 4 * mib <= peak_memory_bytes(one_buffer, torch.device("cpu")) < 4.5 * mib
    assert 8 * mib <= peak_memory_bytes(two_buffers, torch.device("cpu")) < 8.5 * mib


def test_full_attention_memory_grows_quadratically_and_linformer_linearly():
    kw = {"dim": 16, "heads": 2, "repeats": 1}
    results = [bench_one(kind, n, linformer_k=32, **kw) for kind in ("full", "linformer") for n in (256, 1024)]
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in results)
    exps = growth_exponents(results, "peak_mb")
    assert exps["full"] > 1.8                  # 4x tokens -> ~16x memory (the n x n score matrices)
    assert 0.8 < exps["linformer"] < 1.3       # 4x tokens -> ~4x memory (n x k)
    full_1024 = next(r for r in results if r["type"] == "full" and r["tokens"] == 1024)
    # two (heads, n, n) float32 matrices live at the peak at least: scores/weights and their gradient
    assert full_1024["peak_mb"] >= 2 * 2 * 1024 * 1024 * 4 / 2**20


def test_growth_exponents_and_grids():
    fake = [{"type": "a", "tokens": n, "peak_mb": n * n / 1e3, "ms": n / 10} for n in (64, 256, 1024)]
    assert growth_exponents(fake, "peak_mb")["a"] == pytest.approx(2.0)
    assert growth_exponents(fake, "ms")["a"] == pytest.approx(1.0)
    assert grid_for(16384) == (128, 128) and grid_for(12) == (3, 4) and grid_for(7) == (1, 7)


def test_cli_prints_table_and_writes_plot_and_json(tmp_path, capsys):
    rc = main(["bench", "attention", "--tokens", "64,256", "--types", "full,axial", "--dim", "16",
               "--repeats", "1", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "full" in out and "axial" in out and "mem  ~ n^" in out
    data = json.loads((tmp_path / "attention_bench.json").read_text())
    assert [(r["type"], r["tokens"]) for r in data["results"]] == [("full", 64), ("axial", 64), ("full", 256),
                                                                   ("axial", 256)]
    assert "profiler" in data["memory_method"]
    assert (tmp_path / "attention_bench.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_refuses_unknown_targets_and_types(capsys):
    assert main(["bench", "throughput-of-nothing"]) == 2
    assert main(["bench", "attention", "--types", "sparse"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    # the list of targets grows (model names for throughput): only its start is fixed here
    assert err[0].startswith("vitlab bench: error: unknown bench target 'throughput-of-nothing' (available: attention")
    assert err[1] == ("vitlab bench: error: unknown attention type 'sparse' (choose from full, local, strided, axial, "
                      "linformer, kv_pool)")
