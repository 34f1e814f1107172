"""What `vitlab serve` computes for a DETR checkpoint and one uploaded image. Pure library code, no web framework.

    detect(served, data, threshold)               boxes, labels, scores above threshold: exactly what
                                                  `vitlab predict` (tasks.detection.detect_files) finds
    detection_attention(served, data, threshold)  per kept detection, its query's last-decoder-layer
                                                  cross-attention over the encoder's feature grid (per head and the
                                                  mean over heads), as vitlab.explain.detr records it (DETR Fig. 6)

Both squash the image to the model's S x S input, as DETR trains and `vitlab predict` detects, and give boxes xyxy in
the pixels of the uploaded image. The maps lie over the whole (squashed) image: grid cell (r, c) covers rows
r*H/gh .. (r+1)*H/gh of the upload.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import VitlabError
from ..explain.detr import detected_queries, record_detr_attention
from ..explain.report import model_input
from .models import ServedModel, _rounded, check_upload


def detector_info(served: ServedModel) -> dict[str, Any]:
    """The fields of /api/models that the detection view needs: feature grid at the input size, cross-attention
    heads, decoder layers, object queries."""
    m, size = served.model, served.predictor.image_size
    return {"grid": list(m.feature_grid(size, size)), "heads": m.decoder.layers[-1].cross_attn.num_heads,
            "layers": len(m.decoder.layers), "num_queries": m.num_queries}


def parse_threshold(value: str | None, default: float = 0.5) -> float:
    """The form field `threshold`: a number in [0, 1] (default 0.5). Raises VitlabError with one line."""
    if value is None or value.strip() == "":
        return default
    try:
        t = float(value)
    except ValueError:
        t = math.nan
    if not 0.0 <= t <= 1.0:                     # NaN fails this too
        raise VitlabError(f"threshold must be a number in [0, 1], got {value[:40]!r}")
    return t


def detect(served: ServedModel, data: bytes, threshold: float = 0.5, filename: str | None = None) -> dict[str, Any]:
    """Uploaded bytes -> {"image_size": [H, W], "threshold", "detections": [{class, index, score, box_xyxy}]}, best
    first, boxes in the upload's pixels; the same detections as `vitlab predict` on that file."""
    from ..tasks.detection.task import detect_files

    name = check_upload(data, filename=filename)
    try:
        with served.lock:
            ((original, det),) = detect_files(served.predictor, [data], threshold)
    except VitlabError as e:
        raise _broken(name, e) from None
    classes = served.predictor.classes
    return {"image_size": list(original.shape[-2:]), "threshold": threshold,
            "detections": [{"class": _name(classes, c), "index": c, "score": round(s, 6),
                            "box_xyxy": [round(v, 3) for v in b]}
                           for s, c, b in zip(det["scores"].tolist(), det["labels"].tolist(), det["boxes"].tolist())]}


def detection_attention(served: ServedModel, data: bytes, threshold: float = 0.5,
                        filename: str | None = None) -> dict[str, Any]:
    """Uploaded bytes -> {"grid": [gh, gw], "heads", "image_size": [H, W], "threshold", "below_threshold",
    "detections": [{query, class, index, score, box_xyxy, attention (gh, gw), attention_heads (heads, gh, gw)}]}.
    attention is the mean over heads of the query's last-decoder-layer cross-attention (sums to 1). When no query
    scores above the threshold, the best few (vitlab.explain.detr.FALLBACK_QUERIES) come with below_threshold true."""
    from ..data.decode import decode_image

    name = check_upload(data, filename=filename)
    try:
        img = decode_image(data)
    except VitlabError as e:
        raise _broken(name, e) from None
    size = served.predictor.image_size
    small = img.resize((size, size), Image.Resampling.BILINEAR)          # squashed, as detect_files does
    x = torch.from_numpy(np.asarray(small, dtype=np.uint8).copy()).permute(2, 0, 1)[None]   # (1, 3, S, S)
    model = served.model
    with served.lock:
        rec = record_detr_attention(model, model_input(model, x))
    det = detected_queries(rec.outputs, threshold, (img.height, img.width), max_objects=model.num_queries)[0]
    gh, gw = rec.grid
    maps = rec.cross[0][:, det["queries"]].reshape(-1, len(det["queries"]), gh, gw)   # (heads, k, gh, gw)
    maps = maps.transpose(0, 1).double()                                             # (k, heads, gh, gw)
    classes = served.predictor.classes
    detections = [{"query": int(q), "class": _name(classes, int(c)), "index": int(c), "score": round(float(s), 6),
                   "box_xyxy": [round(float(v), 3) for v in b], "attention": _rounded(m.mean(0)),
                   "attention_heads": _rounded(m)}
                  for q, s, c, b, m in zip(det["queries"], det["scores"], det["labels"], det["boxes"], maps)]
    return {"model": served.name, "task": "detection", "grid": [gh, gw], "heads": int(rec.cross.shape[1]),
            "image_size": [img.height, img.width], "threshold": threshold,
            "below_threshold": bool(det["below_threshold"]), "detections": detections}


def _broken(name: str, e: VitlabError) -> VitlabError:
    reason = str(e).removeprefix("cannot decode <bytes>: ")
    return VitlabError(f"{name} is a broken image: {reason}")


def _name(classes: list[str], k: int) -> str:
    return classes[k] if 0 <= k < len(classes) else str(k)
