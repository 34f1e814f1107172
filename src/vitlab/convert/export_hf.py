"""Writing checkpoints: a vitlab model as an HF transformers directory.

    save_hf(model, dir)                       -> config.json + model.safetensors (+ preprocessor_config.json,
                                                 + a CLIP's tokenizer files)

`vitlab convert` end to end (read any format, write vitlab or HF) is vitlab.checkpoint.convert_checkpoint.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..checkpoint_files import WEIGHTS_NAME, save_weights
from ..io import write_json


def save_hf(model: nn.Module, directory: str | Path) -> Path:
    """Write `model` as a directory `transformers.AutoModel*.from_pretrained` loads (safetensors, on-disk names)."""
    from .hf import CONFIG, PREPROCESSOR, hf_architecture_for

    arch = hf_architecture_for(model)
    config, weights, preprocessor = arch.write(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(weights, directory / WEIGHTS_NAME, metadata={"format": "pt"})
    write_json(directory / CONFIG, {**config, "torch_dtype": "float32"})
    if preprocessor:
        write_json(directory / PREPROCESSOR, preprocessor)
    if arch.write_files is not None:
        arch.write_files(model, directory)
    return directory
