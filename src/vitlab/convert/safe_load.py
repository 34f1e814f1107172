"""Reading weight files without running code from them.

A .pth/.pt/.bin file is a pickle: unpickling may execute arbitrary code. We always load with
torch.load(weights_only=True), which accepts tensors, numbers, strings and plain containers only. A file that needs
more (a pickled training namespace, a custom class) is refused with the reason; a user who trusts its source may
convert it once with `vitlab convert SRC DST --trust-pickle` and use the safetensors result from then on.
"""
from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import VitlabError

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
WRAPPER_KEYS = ("state_dict", "model", "model_state", "module")   # where training scripts nest the weights


def load_torch(path: str | Path, trust_pickle: bool = False, *, safe_globals: tuple = (), mmap: bool = False) -> Any:
    """torch.load on CPU with weights_only=True, or full unpickling when the caller explicitly trusts the file.
    safe_globals: classes the weights-only unpickler may also build (e.g. argparse.Namespace, the saved args of
    DINO's training script); mmap: memory-map a zip file (a legacy file is then read normally)."""
    path = Path(path)
    if trust_pickle:
        log.warning("%s: unpickling with weights_only=False (trusted source)", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        culprits = sorted(set(re.findall(r"GLOBAL (\S+)", str(e))))
        raise VitlabError(
            f"{path}: refusing to unpickle it: the file holds Python objects beyond tensors "
            f"({', '.join(culprits) or 'weights_only=True failed'}) and unpickling can run code; if you trust its "
            f"source, convert it once with `vitlab convert {path} OUT --trust-pickle`") from None
    except (RuntimeError, EOFError, OSError) as e:
        if mmap:          # a legacy (non-zip) file cannot be memory-mapped
            return load_torch(path, trust_pickle, safe_globals=safe_globals)
        raise VitlabError(f"{path}: not a readable PyTorch file ({str(e).splitlines()[0]})") from None


def load_safetensors(path: str | Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise VitlabError(f"{path}: cannot read safetensors ({e})") from None


def load_state_file(path: str | Path, trust_pickle: bool = False) -> dict[str, Tensor]:
    """A state dict from a .safetensors or PyTorch file, unwrapped from training-checkpoint containers."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    return unwrap_state_dict(load_torch(path, trust_pickle), path)


def unwrap_state_dict(obj: Any, path: str | Path = "checkpoint") -> dict[str, Tensor]:
    """Find the weights in what a training script saved: bare, or under 'model' / 'state_dict' / ...;
    DataParallel's `module.` prefix removed; non-tensor entries (step counters, ...) dropped."""
    for _ in range(3):                                  # e.g. {'model': {'state_dict': {...}}}
        if not isinstance(obj, dict) or any(isinstance(v, Tensor) for v in obj.values()):
            break                                       # a bare state dict (or nothing we know)
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise VitlabError(f"{path}: holds no state dict (expected tensors, bare or under 'model'/'state_dict')")
    sd = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd
