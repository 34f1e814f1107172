"""Measured matmul peak and model FLOPs utilisation (MFU).

MFU = (model FLOPs per image x images/s) / peak FLOP/s, where the peak is *measured* here with a large square
matmul in the same dtype on the same device (not a datasheet figure, which a shared or throttled machine never
reaches). Training FLOPs per image = 3 x forward (the backward costs two forward passes: gradients with respect
to activations and to weights), with FLOPs = 2 x multiply-accumulates as counted by vitlab.bench.flops.
"""
from __future__ import annotations

import statistics
import time

import torch

from ..layers.cpu_kernels import onednn_available

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels (CUDA is asynchronous; the CPU is not)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: str = "fp32", device: torch.device | str = "cpu", n: int | None = None,
                repeats: int = 5, min_time_s: float = 0.2) -> float:
    """FLOP/s of an n x n x n matmul (2 n^3 FLOPs), median over `repeats` timed runs of at least `min_time_s`.

    n defaults to 2048 on a CPU and 8192 on a GPU (large enough for the library's best kernel). Under CPU
    autocast the bf16 matmuls are what a model runs, so the bf16 peak is the one its MFU is measured against.
    On a CPU the faster of torch.mm and oneDNN's matmul (what vitlab's Linear runs) counts: on the README's AMD
    EPYC torch.mm's fp32 GEMM (MKL) reaches ~220 GFLOP/s and oneDNN's ~500, so a torch.mm peak alone would let
    MFU pass 100%.
    """
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(DTYPES[dtype])
    b = torch.randn(n, n, device=device).to(DTYPES[dtype])
    kernels = [lambda: torch.mm(a, b)]
    if device.type == "cpu" and onednn_available():
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(b, n)
        kernels.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
    with torch.no_grad():
        return max(_rate(k, 2 * n ** 3, device, repeats, min_time_s) for k in kernels)


def _rate(kernel, flops: float, device: torch.device, repeats: int, min_time_s: float) -> float:
    kernel()                                         # warm-up: kernel selection, page faults
    synchronize(device)
    t0 = time.perf_counter()
    kernel()
    synchronize(device)
    once = max(time.perf_counter() - t0, 1e-9)
    inner = max(1, int(min_time_s / once))          # enough matmuls per timed run to see past timer noise
    rates = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            kernel()
        synchronize(device)
        rates.append(flops * inner / (time.perf_counter() - t0))
    return statistics.median(rates)


def flops_per_image(macs_per_image: float, train: bool) -> float:
    """FLOPs one image costs: 2 per MAC forward, times 3 for forward + backward."""
    return 2.0 * macs_per_image * (3 if train else 1)


def mfu(images_per_s: float, macs_per_image: float, peak_flops: float, train: bool) -> float:
    """Model FLOPs utilisation in [0, 1]: useful model FLOP/s over the measured peak."""
    return images_per_s * flops_per_image(macs_per_image, train) / peak_flops
