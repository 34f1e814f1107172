"""What `vitlab serve` computes for a captioning checkpoint and one uploaded image. Pure library code, no web framework.

    caption(served, data)              the caption: exactly the line `vitlab predict` prints for that image (the
                                       task's decoding settings, the tokenizer restored from the checkpoint)
    caption_attention(served, data)    the generated words and, per word, its attention over the image-token grid
                                       (each map sums to 1): what vitlab.explain.captioning draws, Xu et al. Fig. 3

The upload is read as `vitlab predict` reads a file (vitlab.data.load_image at the model's input size), so the image
the page shows is the one the model captioned; grid cell (r, c) covers rows r*S/gh .. (r+1)*S/gh of it.
"""
from __future__ import annotations

from typing import Any

from ..runtime import autocast
from ..tasks.captioning import TASK, Caption, caption_tokenizer, generate_captions
from .models import ServedModel, _png_data_url, _rounded, decode_upload


def captioner_info(served: ServedModel) -> dict[str, Any]:
    """The fields of /api/models that the captioning view needs: the image-token grid, the decoder kind, the
    longest caption."""
    m = served.model
    return {"grid": list(m.grid_size), "decoder": m.cfg.decoder, "max_words": int(m.cfg.max_len) - 1,
            "attention": True, "pos_embed": False, "num_prefix_tokens": 0, "layers": 1, "heads": 1,
            "vocab_size": len(caption_tokenizer(m).tokens())}


def _caption(served: ServedModel, data: bytes, filename: str | None) -> tuple[Any, Caption]:
    pred = served.predictor
    image = decode_upload(data, pred.image_size, filename=filename)             # uint8 (1, 3, S, S)
    tok = caption_tokenizer(pred.model)
    with served.lock, autocast(pred.device, pred.precision):                    # as CaptioningTask.predict
        (cap,) = generate_captions(pred.model, pred.normalize(image.to(pred.device)), tok,
                                   beam_size=TASK.beam_size)
    return image, cap


def caption(served: ServedModel, data: bytes, filename: str | None = None) -> dict[str, Any]:
    """Uploaded bytes -> {"caption": text, "words": [...]}: the caption `vitlab predict` prints for that file."""
    _, cap = _caption(served, data, filename)
    return {"caption": cap.text, "words": cap.words}


def caption_attention(served: ServedModel, data: bytes, filename: str | None = None) -> dict[str, Any]:
    """Uploaded bytes -> {"model", "task", "caption", "grid": [gh, gw], "decoder", "image" (PNG data URL at the
    input size), "words": [{"word", "attention" (gh, gw)}]}: per generated word (no bos/eos), the decoder's
    attention over the image tokens when it predicted that word (transformer: the last layer's cross-attention,
    mean over heads; LSTM: the soft-attention weights). Each map sums to 1."""
    image, cap = _caption(served, data, filename)
    gh, gw = served.model.grid_size
    return {"model": served.name, "task": "captioning", "caption": cap.text, "grid": [gh, gw],
            "decoder": served.model.cfg.decoder, "image": _png_data_url(image[0]),
            "words": [{"word": w, "attention": _rounded(cap.attention[t].double().view(gh, gw))}
                      for t, w in enumerate(cap.words)]}
