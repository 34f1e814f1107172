"""The models a server holds and what it computes for one image. Pure library code: no web framework here.

A model is recorded through the shared Attention's explicit path (vitlab.explain.recording), which switches flags
and adds hooks on the module itself; two forwards of one model at once would mix their records, so each model has
a lock and its forwards run one at a time (torch already spreads one forward over the cores).
"""
from __future__ import annotations

import io
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import VitlabError
from ..explain.distance import attention_distances, pixel_patch_size
from ..explain.patch_logits import patch_logits
from ..explain.pos_embed import position_embedding_similarity
from ..explain.recording import attention_modules, record_attention
from ..explain.report import model_input
from ..explain.rollout import HEAD_FUSIONS, classifier_attention, rollout_map
from ..predict import Predictor
from ..tasks.classification import classification_logits

log = logging.getLogger(__name__)
SERVED_TASKS = ("classification", "detection", "captioning")


@dataclass
class ServedModel:
    """One checkpoint named at start, loaded once (safetensors / weights_only: nothing unpickled)."""
    name: str
    predictor: Predictor
    data: str | None = None                # the data spec it was trained on (for validation samples)
    seed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _val: Any = None
    task: str = "classification"           # one of SERVED_TASKS: which endpoints' answers and which page view

    @property
    def model(self) -> torch.nn.Module:
        return self.predictor.model

    def info(self) -> dict[str, Any]:
        """What the page needs to draw this model's views (no filesystem path)."""
        m = self.model
        grid = getattr(getattr(m, "patch_embed", None), "grid_size", None)
        attn = attention_modules(m)
        return {"name": self.name, "model": getattr(m, "vitlab_name", type(m).__name__),
                "classes": self.predictor.classes, "num_classes": len(self.predictor.classes),
                "image_size": self.predictor.image_size, "grid": list(grid) if grid else None,
                "num_prefix_tokens": int(getattr(m, "num_prefix_tokens", 0)),
                "layers": len(attn), "heads": attn[0].num_heads if attn else 0,
                "attention": bool(attn) and grid is not None,
                "pos_embed": isinstance(getattr(m, "pos_embed", None), Tensor),
                "validation_images": self.data in ("digits", "shapes"), "data": self.data, "task": self.task,
                **(_detector_info(self) if self.task == "detection" else {}),
                **(_captioner_info(self) if self.task == "captioning" else {})}


def _detector_info(served: ServedModel) -> dict[str, Any]:
    from .detection import detector_info

    return {**detector_info(served), "attention": True, "pos_embed": False, "num_prefix_tokens": 0}


def _captioner_info(served: ServedModel) -> dict[str, Any]:
    from .captioning import captioner_info

    return captioner_info(served)


def _unique_name(path: str, taken: set[str]) -> str:
    p = Path(path)
    base = p.name if p.is_dir() or not p.suffix else (p.parent.name if p.stem == "model" else p.stem)
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base) or "model"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


def load_served_models(paths: list[str]) -> dict[str, ServedModel]:
    """Load every checkpoint (run directory, vitlab/HF/timm file, or a registered name: fresh weights).
    Classification, detection (DETR) and captioning models are served; a CLIP or segmentation model is refused in
    one line."""
    from ..tasks import task_of

    if not paths:
        raise VitlabError("give at least one --checkpoint RUN_DIR_OR_FILE (e.g. runs/demo from `make demo`)")
    served: dict[str, ServedModel] = {}
    for path in paths:
        pred = Predictor.load(path)
        task = task_of(pred.model).name
        if task not in SERVED_TASKS:
            raise VitlabError(f"{path}: a {task} model; vitlab serve shows classification, detection and "
                              f"captioning checkpoints only (the {task} views are not built yet)")
        if task == "captioning":                        # its tokenizer, restored from the checkpoint: or one line
            from ..tasks.captioning import caption_tokenizer

            caption_tokenizer(pred.model)
        meta = getattr(pred.model, "vitlab_meta", {}) or {}
        name = _unique_name(path, set(served))
        served[name] = ServedModel(name, pred, data=meta.get("data"), task=task,
                                   seed=int((meta.get("train") or {}).get("seed", 0) or 0))
        log.info("serving %s as %r", path, name)
    return served


def decode_upload(data: bytes, image_size: int, max_pixels: int | None = None, filename: str | None = None) -> Tensor:
    """Uploaded bytes -> uint8 (1, 3, S, S) through the library's robust decoder, after check_upload. Raises
    VitlabError with one line, naming the upload, on anything that is not a readable image."""
    from ..data.decode import load_image

    name = check_upload(data, max_pixels, filename)
    try:
        return load_image(data, image_size).unsqueeze(0)
    except VitlabError as e:                            # a known format whose data is broken (truncated, corrupt)
        reason = str(e).removeprefix("cannot decode <bytes>: ")
        raise VitlabError(f"{name} is a broken image: {reason}") from None


def check_upload(data: bytes, max_pixels: int | None = None, filename: str | None = None) -> str:
    """Read only the header of uploaded bytes: an image of more than max_pixels (default PIL's
    Image.MAX_IMAGE_PIXELS, its decompression-bomb guard), an empty upload or one PIL recognises no format in is
    refused with one line naming it (PIL's own message names a Python object, never shown). -> how errors name it."""
    name = upload_name(filename)
    if not data:
        raise VitlabError(f"{name} is empty")
    limit = max_pixels or Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(io.BytesIO(data)) as img:       # reads the header only
            w, h = img.size
    except Image.DecompressionBombError:                # PIL refuses past 2x its limit already at open
        raise VitlabError(f"{name} refused (decompression-bomb guard): more than {2 * Image.MAX_IMAGE_PIXELS} "
                          "pixels; it was not decoded") from None
    except Exception:  # noqa: BLE001 - PIL recognises no image format in the bytes
        raise VitlabError(f"{name} is not an image PIL can read (no valid PNG, JPEG, GIF, BMP, TIFF or WebP "
                          "header)") from None
    if w * h > limit:
        raise VitlabError(f"{name} refused (decompression-bomb guard): {w}x{h} is {w * h} pixels, more than the "
                          f"limit of {limit}; it was not decoded")
    return name


def upload_name(filename: str | None) -> str:
    """How an error names an upload: its file name, quoted and cut to 60 printable characters."""
    if not filename:
        return "the upload"
    clean = "".join(ch if ch.isprintable() else "?" for ch in Path(filename.replace("\\", "/")).name)[:60]
    return f"the upload {clean!r}"


def predict_top_k(served: ServedModel, image: Tensor, top_k: int = 5) -> list[dict[str, Any]]:
    """uint8 (1, 3, S, S) -> [{class, index, probability}] best first."""
    with served.lock:
        probs = served.predictor.logits(image).softmax(-1)[0]
    return _top_k(probs, served.predictor.classes, top_k)


def _top_k(probs: Tensor, classes: list[str], k: int) -> list[dict[str, Any]]:
    values, indices = probs.topk(min(k, probs.numel()))
    return [{"class": classes[i], "index": i, "probability": round(float(v), 6)}
            for v, i in zip(values.tolist(), indices.tolist())]


def analyse(served: ServedModel, image: Tensor, *, head_fusion: str = "mean", discard_ratio: float = 0.0,
            full: bool = False, max_full_values: int = 8_000_000, top_k: int = 5) -> dict[str, Any]:
    """One image (uint8 (1, 3, S, S)) -> everything the page draws:
    top_k; grid [gh, gw]; cls_attention (layers, heads, gh, gw); rollout (gh, gw), max 1; attention_distance
    (layers, heads) in pixels; patch_logits (classes, gh, gw); pos_embed_similarity (gh, gw, gh, gw) or None;
    with `full`, attention (layers, heads, N, N) as little-endian float32 base64, refused past max_full_values."""
    if head_fusion not in HEAD_FUSIONS:
        raise VitlabError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise VitlabError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    info = served.info()
    model, grid, prefix = served.model, info["grid"], info["num_prefix_tokens"]
    if not info["attention"]:
        raise VitlabError(f"{served.name} ({info['model']}) has no attention over a patch grid to show")
    gh, gw = grid
    n = prefix + gh * gw
    if full and info["layers"] * info["heads"] * n * n > max_full_values:
        raise VitlabError(f"full attention would be {info['layers']}x{info['heads']}x{n}x{n} values, more than "
                          f"the limit of {max_full_values}; ask without full=1")
    x = model_input(model, image)
    with served.lock:
        out, attentions = record_attention(model, x)
        logits_per_patch = patch_logits(model, x)[0]                    # (classes, gh, gw)
    if any(tuple(a.shape) != (1, info["heads"], n, n) for a in attentions):
        raise VitlabError(f"{served.name} has windowed or pooled attention: no global attention per patch")
    probs = classification_logits(out).float().softmax(-1)[0]
    result: dict[str, Any] = {
        "model": served.name, "top_k": _top_k(probs, served.predictor.classes, top_k), "grid": [gh, gw],
        "num_prefix_tokens": prefix, "layers": len(attentions), "heads": info["heads"],
        "image": _png_data_url(image[0]),
        "cls_attention": _rounded(torch.stack([classifier_attention(a, (gh, gw), prefix)[0] for a in attentions])),
        "rollout": _rounded(rollout_map(attentions, (gh, gw), prefix, head_fusion, discard_ratio)[0]),
        "head_fusion": head_fusion, "discard_ratio": discard_ratio,
        "attention_distance": _rounded(attention_distances(attentions, (gh, gw), pixel_patch_size(model), prefix)),
        "patch_logits": _rounded(logits_per_patch),
        "pos_embed_similarity": _rounded(position_embedding_similarity(model)) if info["pos_embed"] else None,
    }
    if full:
        stacked = torch.stack([a[0] for a in attentions]).float().contiguous()   # (layers, heads, N, N)
        import base64

        result["attention"] = {"shape": list(stacked.shape), "dtype": "float32",
                               "data": base64.b64encode(stacked.numpy().astype("<f4").tobytes()).decode()}
    return result


def validation_image(served: ServedModel, index: int, source: str = "val") -> tuple[Tensor, str]:
    """A sample at the model's input size: one of the run's validation images (digits and shapes runs: cheap),
    a generated shapes image, or a generated scenes image. -> (uint8 (3, S, S), its true class name; for a scene,
    its caption)."""
    size = served.predictor.image_size
    if source == "shapes":
        from ..data.shapes import SHAPE_CLASSES, generate_shapes

        s = generate_shapes(1, size, np.random.default_rng([index % 2**32, 7]))
        k = index % len(s)
        return s.images[k], SHAPE_CLASSES[int(s.labels[k])]
    if source == "scenes":
        from ..data.scenes import generate_scenes

        scene = generate_scenes(1, max(size, 32), np.random.default_rng([index % 2**32, 11]))
        image = scene.images[0]
        if image.shape[-1] != size:                     # scenes need room for their objects: drawn at >= 32 px
            from ..data.decode import resize_uint8

            image = resize_uint8(image[None], size)[0]
        return image, scene.captions[0]
    if source != "val":
        raise VitlabError(f"source must be val, shapes or scenes, got {source[:40]!r}")
    if served.data not in ("digits", "shapes"):
        raise VitlabError(f"{served.name}: its validation images are not available here (data "
                          f"{served.data or 'unknown'}; only digits and shapes runs are cheap to rebuild)")
    with served.lock:
        if served._val is None:
            from ..data import build_data

            served._val = build_data(served.data, size, seed=served.seed).val
    val = served._val
    image, label = val[index % len(val)]
    return image, val.classes[label]


def png_bytes(image: Tensor) -> bytes:
    """uint8 (3, H, W) -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


def _png_data_url(image: Tensor) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def _rounded(t: Tensor) -> list:
    return np.round(t.detach().double().cpu().numpy(), 6).tolist()
