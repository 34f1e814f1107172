"""CLIP in `vitlab bench`: a contrastive step on a batch of image-text pairs instead of images and labels.

    inference  logits_per_image (B, B) of B images and B texts
    training   symmetric InfoNCE (vitlab.models.clip.clip_loss) + backward + AdamW

Texts are random token ids of the model's full context length shaped like a tokenizer's: bos, words, one eos
at a random caption length, padding after it. Every word id is below the eos id, so HF's two pooling rules
(first eos_token_id, or argmax(ids) for a legacy eos_token_id == 2) and ours pick the same token. The HF
reference is transformers' CLIPModel written from our weights by vitlab's exporter (convert/hf_clip.py), and its
logits_per_image must equal ours before anything is timed.
"""
from __future__ import annotations

import tempfile

import torch
from torch import Tensor, nn

from ..errors import VitlabError

LOGITS_ATOL = 1e-4      # |ours - hf| on logits_per_image (fp32, logit scale 1/0.07 included)


def is_clip(model: nn.Module) -> bool:
    from ..models.clip import CLIP

    return isinstance(model, CLIP)


def exportable_eos(model: nn.Module) -> dict[str, int]:
    """Constructor overrides that make a fresh CLIP exportable to HF: eos 2 (the micro models' word-level
    vocabulary) becomes V - 1, as the exporter's renumbering would do with a tokenizer, which a fresh model lacks.
    The architecture and its cost are unchanged. {} when nothing needs changing."""
    from ..convert.hf_tokenizer import eos_swap

    c = model.cfg
    if c.text_pool == "eos" and eos_swap(c.eos_id, c.vocab_size) is not None:
        return {"eos_id": c.vocab_size - 1}
    return {}


def random_texts(model: nn.Module, batch: int, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None) -> Tensor:
    """(batch, context_length) long: [bos, words..., eos, pad...] with a random caption length per row.

    bos = eos - 1 when there is room (CLIP's layout: bos V - 2, eos V - 1), words in [1, bos), pad 0. The eos is
    the largest id of each row, so argmax pooling finds it too."""
    c = model.cfg
    L, eos = c.context_length, c.eos_id
    if eos < 3 or L < 3:
        raise VitlabError(f"bench needs an eos id >= 3 and >= 3 text positions, got eos {eos}, context {L}")
    bos = eos - 1
    ids = torch.randint(1, bos, (batch, L), generator=generator)               # (B, L) words
    ids[:, 0] = bos
    eos_at = torch.randint(2, L, (batch,), generator=generator)                # (B,) position of the eos
    pos = torch.arange(L).expand(batch, L)                                     # (B, L)
    ids[pos == eos_at[:, None]] = eos
    ids[pos > eos_at[:, None]] = 0                                             # padding after the eos
    return ids.to(device)


class PairLogits(nn.Module):
    """Ours as (images (B, 3, H, W), input_ids (B, L)) -> logits_per_image (B, B)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, input_ids: Tensor) -> Tensor:
        return self.model(images, input_ids)["logits_per_image"]


class HFPairLogits(nn.Module):
    """transformers' CLIPModel as (images, input_ids) -> logits_per_image (B, B); causal mask only, like ours
    (padding sits after the pooled eos, so no attention mask is needed)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, input_ids: Tensor) -> Tensor:
        return self.model(pixel_values=images, input_ids=input_ids).logits_per_image


class PairMacs(nn.Module):
    """For count_macs: images (1, 3, H, W) -> both towers on one image and one full-length text (meta-safe: no
    eos lookup). The (B, B) logits product, B * embed_dim MACs per pair, is left out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        m = self.model
        ids = torch.zeros(images.shape[0], m.cfg.context_length, dtype=torch.long, device=images.device)
        text = m.text_projection(m.text(ids)[:, -1])                            # (B, E)
        return m.encode_image(images) + text


def hf_clip_reference(ours: nn.Module) -> nn.Module:
    """transformers' CLIPModel with our config and weights (SDPA attention), via save_hf / from_pretrained."""
    try:
        import transformers
    except ImportError:
        raise VitlabError("--compare hf needs the transformers package (pip install transformers)") from None
    from ..convert.export_hf import save_hf

    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(ours, tmp)                      # clip_to_hf: config, weights (patch bias folded), preprocessor
        model = transformers.CLIPModel.from_pretrained(tmp, attn_implementation="sdpa")
    return HFPairLogits(model.float())


def check_same_logits(ours: nn.Module, ref: nn.Module, inputs: tuple[Tensor, Tensor], name: str = "hf") -> float:
    """Max |ours - ref| of logits_per_image on the bench inputs (fp32, eval); VitlabError above LOGITS_ATOL."""
    modes = ours.training, ref.training
    ours.eval(), ref.eval()
    with torch.no_grad():
        a, b = ours(*inputs).float(), ref(*inputs).float()
    ours.train(modes[0]), ref.train(modes[1])
    diff = (a - b).abs().max().item() if a.shape == b.shape else float("inf")
    if not diff <= LOGITS_ATOL:
        raise VitlabError(f"{name}'s CLIP logits_per_image differ from ours by {diff:.3g} (> {LOGITS_ATOL}): "
                          "not the same model, nothing timed")
    return diff
