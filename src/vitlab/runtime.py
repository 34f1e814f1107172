"""Process-wide CPU settings, applied by the `vitlab` command and the benchmark scripts (never on `import vitlab`:
a library does not change the allocator of someone else's process; call `keep_freed_memory()` yourself if you want
the same in your own script).

Why: glibc's malloc gives large freed blocks back to the operating system (a block above the mmap threshold is
unmapped when freed, and the top of the heap is trimmed once more than the trim threshold is free there). A
training or inference step frees its activations and allocates them again in the next step, so every step faults
tens of megabytes of fresh pages in, page by page. On the 2-core EPYC of the README a ViT-Ti/16 bf16 training
step at batch 32 took 533 ms and ~72k minor page faults with glibc's defaults, 449 ms and none with freed memory
kept (benchmarks/cpu_ablation.py; how much a given step faults depends on the heap's history, which also made
ours-vs-HF ratios drift between runs). Raising both thresholds keeps freed blocks in the heap for reuse: the
resident size stays near the peak of one step instead of dropping between steps (ViT-Ti training: max RSS +2%),
the same trade PyTorch's CUDA caching allocator makes.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import platform
from typing import TYPE_CHECKING

if TYPE_CHECKING:       # torch is imported inside the functions: `vitlab.runtime` loads before torch is needed
    import torch

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1          # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30       # blocks below 1 GiB come from the heap and are reused after free
TRIM_THRESHOLD = 2 ** 31 - 1   # mallopt takes a C int: 4 GiB would wrap to 0, which trims on every free
OPT_OUT = "VITLAB_MALLOC"      # VITLAB_MALLOC=default leaves the allocator as it is
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring). Returns True if the setting is in force.

    Does nothing (False) off glibc, with VITLAB_MALLOC=default, where the user set malloc thresholds themselves
    (MALLOC_*_THRESHOLD_ or glibc.malloc tunables), or under a preloaded jemalloc/tcmalloc, which do not return
    memory this eagerly anyway. Idempotent."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get(OPT_OUT, "").lower() in ("default", "0", "off", "no"):
        return False
    if any(k in os.environ for k in USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    log.debug("glibc malloc: keep freed memory for reuse: %s", ok)
    return ok


# --- devices and precision: used by training, evaluation, prediction and the benchmarks alike --------------------
def resolve_device(name: str) -> "torch.device":
    """"auto" -> cuda when available, else cpu; "cuda" without a GPU and unknown names raise VitlabError."""
    import torch

    from .errors import VitlabError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VitlabError("--device cuda: no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise VitlabError(f"unknown device {name!r}") from None


def resolve_precision(name: str, device: "torch.device") -> str:
    """"auto" -> bf16 on a CUDA device that has it, else fp32; fp32, bf16 and fp16 pass through."""
    import torch

    from .errors import VitlabError

    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name not in ("fp32", "bf16", "fp16"):
        raise VitlabError(f"--precision must be fp32, bf16 or auto, got {name!r}")
    return name


def autocast(device: "torch.device", precision: str) -> "contextlib.AbstractContextManager":
    """torch.autocast for bf16/fp16 on `device` (the CPU included); a no-op context for fp32."""
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()
