"""ONNX export and ONNX Runtime inference.

    path = export_onnx(model, "runs/demo/model.onnx")          # dynamic batch, metadata embedded
    predictor = OnnxPredictor.load("runs/demo/model.onnx")      # same interface as vitlab.predict.Predictor
    predictor.predict(["cat.png"])

The graph takes normalised float pixels (B, 3, S, S) named `pixel_values` and returns `logits` (B, num_classes),
like the model's forward. What a caller needs besides the graph (class names, input size, mean/std, the model
name) is stored in the file's metadata under the key "vitlab", so one .onnx file is a complete predictor.

Exporter: torch.onnx's TorchScript-based exporter (dynamo=False) by default, the one ONNX Runtime's graph fusions
(attention, LayerNorm, GELU) were written against; `dynamo=True` uses torch.export instead. Attention goes out as
plain MatMul/Softmax (opset 17), which the ONNX Runtime fuses on load.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.augment import Normalize
from ..errors import VitlabError
from ..io import atomic_path
from ..predict import Predictor
from ..tasks.classification import classification_logits

log = logging.getLogger(__name__)

METADATA_KEY = "vitlab"
INPUT, OUTPUT = "pixel_values", "logits"


class LogitsOnly(nn.Module):
    """The graph's one output: the logits of a model with named outputs (a distilled DeiT: the late fusion)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.cfg = getattr(model, "cfg", None)

    def forward(self, x: Tensor) -> Tensor:
        return classification_logits(self.model(x))


def export_onnx(model: nn.Module, path: str | Path, *, opset: int = 17, dynamic_batch: bool = True,
                dynamo: bool = False, metadata: dict[str, Any] | None = None) -> Path:
    """Write `model` (eval, float32, CPU) as an ONNX graph pixel_values (B, 3, S, S) -> logits (B, num_classes).

    S is the model's input size (cfg.img_size). metadata (JSON-able) is stored beside the graph; by default the
    model name, class names, input size and normalisation."""
    try:
        import onnx
    except ImportError:
        raise VitlabError("ONNX export needs the onnx package (pip install 'vitlab[onnx]')") from None
    path = Path(path)
    model = model.eval().float().cpu()
    size = _input_size(model)
    x = torch.randn(2, getattr(model.cfg, "in_chans", 3), size, size)
    meta = {**default_metadata(model), **(metadata or {})}
    graph = LogitsOnly(model)                  # one output: the logits, also of models with named outputs
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")          # tracer warnings on Python-level shape checks (constant here)
        if dynamo:
            shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic_batch else None
            torch.onnx.export(graph, (x,), str(tmp), input_names=[INPUT], output_names=[OUTPUT], opset_version=opset,
                              dynamo=True, dynamic_shapes=shapes)
        else:
            axes = {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}} if dynamic_batch else None
            torch.onnx.export(graph, (x,), str(tmp), input_names=[INPUT], output_names=[OUTPUT], opset_version=opset,
                              dynamo=False, dynamic_axes=axes)
        graph = onnx.load(str(tmp))
        graph.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
        onnx.save(graph, str(tmp))
    log.info("wrote %s (opset %d, %s exporter)", path, opset, "dynamo" if dynamo else "TorchScript")
    return path


def default_metadata(model: nn.Module) -> dict[str, Any]:
    meta = getattr(model, "vitlab_meta", {}) or {}
    return {"model": getattr(model, "vitlab_name", type(model).__name__), "image_size": _input_size(model),
            "num_classes": model.num_classes,
            "classes": meta.get("classes") or [str(i) for i in range(model.num_classes)],
            "mean": list(model.cfg.mean), "std": list(model.cfg.std)}


def _input_size(model: nn.Module) -> int:
    size = model.cfg.img_size
    size = size if isinstance(size, int) else size[0]
    if not isinstance(model.cfg.img_size, int) and model.cfg.img_size[0] != model.cfg.img_size[1]:
        raise VitlabError(f"ONNX export supports square inputs; the model takes {tuple(model.cfg.img_size)}")
    return int(size)


class OnnxModel:
    """An ONNX Runtime session used like the model: float pixels (B, 3, S, S) -> logits tensor (B, num_classes).

    threads: intra-op threads (None: ONNX Runtime's choice, one per core)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise VitlabError("--runtime onnx needs the onnxruntime package (pip install 'vitlab[onnx]')") from None
        path = Path(path)
        if not path.is_file():
            raise VitlabError(f"{path}: no such ONNX file (write one with `vitlab export --onnx CHECKPOINT`)")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
            # the same choice as PyTorch's OpenMP threads: on cores shared with other jobs, a worker thread that
            # busy-waits for its peer takes the core that peer needs
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:   # onnxruntime raises its own Fail/InvalidGraph types for unreadable files  # noqa: BLE001
            raise VitlabError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata: dict[str, Any] = json.loads(raw) if raw else {}
        self.path = path

    def __call__(self, x: Tensor) -> Tensor:
        out = self.session.run([OUTPUT], {INPUT: x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def onnx_path_for(checkpoint: str | Path) -> Path:
    """A .onnx file as given, or the model.onnx a `vitlab export --onnx` wrote into a run directory."""
    p = Path(checkpoint)
    if p.is_dir():
        p = p / "model.onnx"
        if not p.is_file():
            raise VitlabError(f"{checkpoint} has no model.onnx; write it with `vitlab export {checkpoint} --onnx`")
    return p


def load_onnx_predictor(checkpoint: str | Path, threads: int | None = None) -> OnnxPredictor:
    """A Predictor whose forward pass runs in ONNX Runtime, from the metadata export_onnx wrote."""
    session = OnnxModel(onnx_path_for(checkpoint), threads=threads)
    meta = session.metadata
    missing = [k for k in ("image_size", "mean", "std", "classes") if k not in meta]
    if missing:
        raise VitlabError(f"{session.path}: no vitlab metadata ({', '.join(missing)}); export it with vitlab export")
    return OnnxPredictor(session, list(meta["classes"]), int(meta["image_size"]),
                         Normalize(tuple(meta["mean"]), tuple(meta["std"])))


class OnnxPredictor(Predictor):
    """vitlab.predict.Predictor with an ONNX Runtime session in place of the torch model (CPU)."""

    model: OnnxModel

    @classmethod
    def load(cls, checkpoint: str | Path, device: str | torch.device = "cpu", precision: str = "fp32",
             threads: int | None = None) -> OnnxPredictor:
        """From a .onnx file `export_onnx` wrote, or RUN_DIR/model.onnx (`vitlab export RUN_DIR --onnx`).

        Runs on the CPU whatever `device` says; `precision` must be fp32 (the exported graph's); threads: ONNX
        Runtime's intra-op threads (None: one per core)."""
        if precision != "fp32":
            raise VitlabError("--runtime onnx runs the exported fp32 graph: use --precision fp32")
        return load_onnx_predictor(checkpoint, threads=threads)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        """uint8 (B, 3, S, S) -> logits (B, num_classes)."""
        return self.model(self.normalize(images))

    def info(self) -> dict[str, Any]:
        return {"model": self.model.metadata.get("model", "onnx"), "classes": len(self.classes),
                "image_size": self.image_size, "runtime": "onnxruntime"}


def max_logit_difference(model: nn.Module, path: str | Path, batch_sizes: tuple[int, ...] = (1, 3),
                         seed: int = 0) -> dict[int, float]:
    """Largest |ONNX Runtime logit - eager logit| on random inputs, for each batch size."""
    session = OnnxModel(path)
    model = model.eval().float().cpu()
    size = _input_size(model)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for b in batch_sizes:
        x = torch.randn(b, getattr(model.cfg, "in_chans", 3), size, size, generator=g)
        with torch.no_grad():
            out[b] = float((session(x) - classification_logits(model(x))).abs().max())
    return out


def export_checkpoint(checkpoint: str, out: str | Path | None = None, *, opset: int = 17, dynamo: bool = False,
                      check: bool = True) -> dict[str, Any]:
    """`vitlab export --onnx`: a run directory, a foreign checkpoint or a model name (fresh weights) -> .onnx.

    out defaults to RUN_DIR/model.onnx for a directory, else ./<model name>.onnx. With check, the ONNX Runtime
    logits are compared with eager PyTorch's at batch sizes 1 and 3."""
    predictor = Predictor.load(checkpoint)
    model = predictor.model
    if out is None:
        name = getattr(model, "vitlab_name", "model")
        out = Path(checkpoint) / "model.onnx" if Path(checkpoint).is_dir() else Path(f"{name}.onnx")
    meta = {"classes": predictor.classes}
    path = export_onnx(model, out, opset=opset, dynamo=dynamo, metadata=meta)
    result: dict[str, Any] = {"path": str(path), "bytes": path.stat().st_size}
    if check:
        result["max_abs_diff"] = max_logit_difference(model, path)
    return result
