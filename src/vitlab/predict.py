"""Inference on image files with a trained or converted model.

vitlab.export builds on this module (its OnnxPredictor is a Predictor running in ONNX Runtime); this module never
imports vitlab.export, so the CLI picks the runtime: Predictor.load or OnnxPredictor.load.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from .checkpoint import load_model
from .data.augment import Normalize
from .errors import VitlabError
from .layers import freeze_for_inference
from .registry import create_model, list_models


@dataclass
class Predictor:
    """A model with what it needs to read images: class names, input size, normalisation. A text model
    (translation) has neither input size nor normalisation (None): its task reads its inputs (model.tokenizer)."""
    model: nn.Module
    classes: list[str]
    image_size: int | None
    normalize: Normalize | None
    precision: str = "fp32"      # "bf16": the forward under bf16 autocast (CPU included)

    @classmethod
    def load(cls, checkpoint: str | Path, device: str | torch.device = "cpu",
             precision: str = "fp32") -> "Predictor":
        """From a run directory or any checkpoint vitlab reads; a registered model name gives fresh weights.
        precision: "fp32" or "bf16". An exported .onnx file is vitlab.export.OnnxPredictor.load's (ONNX Runtime)."""
        if precision not in ("fp32", "bf16"):
            raise VitlabError(f"--precision must be fp32 or bf16, got {precision!r}")
        if str(checkpoint).endswith(".onnx"):
            raise VitlabError(f"{checkpoint} is an ONNX graph: pass --runtime onnx")

        if not Path(checkpoint).exists() and str(checkpoint) in list_models():
            model = create_model(str(checkpoint)).eval()
            model.vitlab_meta = {}
        elif not Path(checkpoint).exists():
            raise VitlabError(f"{checkpoint}: no such checkpoint, run directory or model name")
        else:
            model = load_model(checkpoint)
        model = freeze_for_inference(model.to(device).eval())   # weights constant from here: packed once for bf16
        cfg = getattr(model, "cfg", None)
        size = getattr(cfg, "img_size", None)
        size = size if size is None or isinstance(size, int) else size[0]
        meta = getattr(model, "vitlab_meta", {})
        classes = meta.get("classes") or [str(i) for i in range(model.num_classes)]
        normalize = Normalize(tuple(cfg.mean), tuple(cfg.std)).to(device) if hasattr(cfg, "mean") else None
        return cls(model, list(classes), size, normalize, precision)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def load_images(self, paths: Sequence[str | Path]) -> Tensor:
        """Image files -> uint8 (B, 3, S, S) at the model's input size."""
        from .data import load_image

        return torch.stack([load_image(p, self.image_size) for p in paths])

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        """uint8 (B, 3, S, S) -> logits (B, num_classes)."""
        from .runtime import autocast
        from .tasks.classification import classification_logits

        self.model.eval()
        with autocast(self.device, self.precision):
            return classification_logits(self.model(self.normalize(images.to(self.device)))).float()

    def predict(self, paths: Sequence[str | Path], top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (class name, probability) for each image file."""
        probs = self.logits(self.load_images(paths)).softmax(dim=-1)
        values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        return [[(self.classes[i], float(v)) for v, i in zip(vs, ids)] for vs, ids in zip(values.tolist(),
                                                                                         indices.tolist())]

    def info(self) -> dict[str, Any]:
        return {"model": getattr(self.model, "vitlab_name", type(self.model).__name__), "classes": len(self.classes),
                "image_size": self.image_size}
