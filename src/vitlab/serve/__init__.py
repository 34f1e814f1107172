"""`vitlab serve`: the attention explorer in the browser (classification checkpoints with attention; DETR detectors:
boxes and each detection's cross-attention, vitlab.serve.detection).

    load_served_models(paths)      checkpoints named at start -> {name: ServedModel}; nothing else is reachable
    analyse(served, image, ...)    one image -> top-k, [CLS] maps, rollout, distances, patch logits, full attention
    create_app(served, ...)        the Starlette app (JSON API + the static page), run by uvicorn
"""
from .models import ServedModel, analyse, decode_upload, load_served_models, predict_top_k

__all__ = ["ServedModel", "analyse", "decode_upload", "load_served_models", "predict_top_k"]
