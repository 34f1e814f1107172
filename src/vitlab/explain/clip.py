"""`vitlab explain` of a CLIP model: where the image tower looks, where each prompt is found, and how every image
scores against every prompt.

    text_similarity_maps(model, x, ids)      (B_i, B_t, gh, gw): cosine of each projected patch token with a prompt
    prompt_maps(model, x, text_embeds)       the same from text embeddings already made (template averages)
    similarity_matrix(model, x, ids)         (B_i, B_t): cosine of the image and text embeddings (logits / scale)
    attnpool_map(model, x, head_fusion)      (B, gh, gw): a ResNet tower's attention-pool weights over the grid
    explain_clip(model, inputs, out, texts)  rollout.png (ViT) or attnpool.png (ResNet), text_maps.png,
                                             similarity.png + index.html, summary.json

The text-conditioned map takes each patch token after the image tower's final norm through the visual projection
into the joint space (the same path the [CLS] token takes to become the image embedding) and compares it with the
prompt's embedding. Patch tokens were never trained to align with text, so the map is a probe, not a segmentation.
A ResNet tower has no patch tokens: each position of its last feature map goes through the attention pool's value
and output projections (the path it would take if the pool attended to it alone; MaskCLIP, Zhou et al. 2022), and
in place of rollout the figure shows the pool's own attention of its mean query over the grid.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VitlabError
from . import plots


@torch.no_grad()
def text_similarity_maps(model: nn.Module, x: Tensor, input_ids: Tensor) -> Tensor:
    """x (B_i, 3, H, W) normalised, input_ids (B_t, L) -> (B_i, B_t, gh, gw): the cosine similarity of each
    patch's projected token (model.image_patch_embeds) with each text's embedding (model.encode_text)."""
    return prompt_maps(model, x, F.normalize(model.encode_text(input_ids).float(), dim=-1))


@torch.no_grad()
def prompt_maps(model: nn.Module, x: Tensor, text_embeds: Tensor) -> Tensor:
    """text_similarity_maps for embeddings (B_t, E), L2-normalised, already made (a class's is the average of its
    prompt templates') -> (B_i, B_t, gh, gw)."""
    patches = F.normalize(model.image_patch_embeds(x).float(), dim=-1)          # (B_i, N, E)
    gh, gw = model.patch_grid()                                                 # ViT patches or ResNet map
    sim = torch.einsum("bne,te->btn", patches, text_embeds)                     # (B_i, B_t, N)
    return sim.reshape(len(x), len(text_embeds), gh, gw)                        # (B_i, B_t, gh, gw)


@torch.no_grad()
def similarity_matrix(model: nn.Module, x: Tensor, text_embeds: Tensor) -> Tensor:
    """x (B_i, 3, H, W) normalised, text_embeds (B_t, E) L2-normalised -> cosine similarities (B_i, B_t)
    (= model(x, ids)["logits_per_image"] / model.scale() for the texts' ids)."""
    return F.normalize(model.encode_image(x).float(), dim=-1) @ text_embeds.t()


def default_prompts(model: nn.Module) -> list[str]:
    """The class names a CLIP checkpoint was trained with (its task_extras "classes"), else VitlabError."""
    extras = (getattr(model, "vitlab_meta", None) or {}).get("task_extras") or {}
    classes = list(extras.get("classes") or [])
    if not classes:
        raise VitlabError("--text is required: the checkpoint knows no class names to prompt with "
                          "(give --text \"a red circle\", repeatable)")
    return classes


def explain_clip(model: nn.Module, inputs: Sequence[str], out: str | Path, *, texts: Sequence[str] | None = None,
                 data: str | None = None, samples: int = 4, head_fusion: str = "mean",
                 discard_ratio: float = 0.0) -> dict[str, Any]:
    """Image files, then `samples` val images of `data` (default, with no file: the run's own data), against
    `texts` (default: each of the checkpoint's classes, embedded through its templates and averaged as zero-shot
    does). Writes out/rollout.png (a ResNet tower: attnpool.png, its attention pool's map; discard_ratio unused),
    text_maps.png, similarity.png, index.html and summary.json; returns the summary with "similarity" (images x
    prompts cosine), "attention_map" (which map the first figure is), "files", "report" and "lines"."""
    vision = getattr(model.cfg, "vision", "vit")
    if vision not in ("vit", "resnet"):
        raise VitlabError(f"{getattr(model, 'vitlab_name', 'this CLIP')}: vitlab explain draws a ViT or ResNet "
                          f"image tower; this one has a {vision} tower")
    from ..io import write_json
    from ..tasks.contrastive import GENERIC_TEMPLATES, clip_tokenizer, encode_texts, zero_shot_classifier
    from .report import ReportFigure, model_input, write_html

    tok = clip_tokenizer(model)
    device = next(model.parameters()).device
    batch, names = _gather(model, inputs, data, samples)
    if texts:
        prompts = list(texts)
        embeds = encode_texts(model, tok, prompts, device)                                  # (T, E)
    else:
        prompts = default_prompts(model)
        templates = tuple(getattr(model, "templates", None) or GENERIC_TEMPLATES)
        embeds = zero_shot_classifier(model, tok, prompts, templates, device)               # (C, E)
    unknown = [p for p in prompts if tok.unk_id in tok.encode(p, bos=False, eos=False)]
    was_training = model.training
    model.eval()
    try:
        x = model_input(model, batch)
        maps = prompt_maps(model, x, embeds).cpu()                                         # (B, T, gh, gw)
        sim = similarity_matrix(model, x, embeds).cpu()                                     # (B, T)
        if vision == "resnet":
            heat = attnpool_map(model, x, head_fusion).cpu()                               # (B, gh, gw)
            with torch.no_grad():                                                          # the query's own share
                self_weight = float(model.visual.attnpool.attention_weights(model.visual.forward_features(x))
                                    [:, :, 0].mean())
        else:
            heat = _rollout(model, x, head_fusion, discard_ratio)                           # (B, gh, gw)
    finally:
        model.train(was_training)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if vision == "resnet":
        attn_file, label = "attnpool.png", "attention-pool weights"
        attn_title = f"Image tower: attention pooling, mean query over the last feature map ({head_fusion} over heads)"
        attn_caption = ("Attention pooling of the ResNet tower: the weights of the pooled (mean) query over each "
                        f"position of the last feature map, {head_fusion} over heads, renormalised over the grid "
                        f"(the query's weight on itself, mean {self_weight:.3f}, left out).")
    else:
        attn_file, label = "rollout.png", "attention rollout"
        attn_title = f"Image tower: attention rollout ({head_fusion} over heads, discard ratio {discard_ratio:g})"
        attn_caption = ("Attention rollout of the image tower: the [CLS] row of the product of per-layer "
                        "(attention + identity) matrices.")
    rows = [[(plots.image_hwc(img), names[i]), (plots.overlay(img, heat[i]), label)] for i, img in enumerate(batch)]
    plots.save_figure(plots.figure_rows(batch, rows, attn_title), out / attn_file)
    plot_text_maps(batch, maps, sim, names, prompts, out / "text_maps.png")
    plot_similarity_matrix(sim, batch, names, prompts, out / "similarity.png")
    how = "--text prompts" if texts else "the checkpoint's classes, each averaged over its prompt templates"
    figures = [ReportFigure("similarity.png", f"Cosine similarity of each image (rows) with each prompt (columns: "
                                              f"{how}); logits_per_image / logit scale."),
               ReportFigure("text_maps.png", "Per prompt: the cosine similarity of every patch token, through the "
                                             "image tower's final norm and projection, with the prompt's embedding "
                                             "(one colour scale per image)."),
               ReportFigure(attn_file, attn_caption)]
    table = (("image", *prompts), [(n, *(f"{float(v):.3f}" for v in row)) for n, row in zip(names, sim)])
    title = f"vitlab explain: {getattr(model, 'vitlab_name', type(model).__name__)} (CLIP)"
    write_html(out / "index.html", title, figures, [], table=table)
    best = sim.argmax(-1)
    lines = [f"{n}: best prompt {prompts[int(k)]!r} (cosine {float(sim[i, k]):.3f})"
             for i, (n, k) in enumerate(zip(names, best))]
    if unknown:
        lines.append(f"note: {len(unknown)} prompts hold words outside the vocabulary (read as unknown): "
                     + ", ".join(repr(p) for p in unknown[:5]))
    summary = {"images": names, "prompts": prompts, "similarity": [[round(float(v), 5) for v in r] for r in sim],
               "files": [f.file for f in figures], "report": str(out / "index.html"), "lines": lines}
    if vision == "resnet":
        summary["attention_map"] = {"file": attn_file, "kind": "attention pooling: the mean query's softmax "
                                    "weights over the last feature map's positions, renormalised over the grid",
                                    "head_fusion": head_fusion, "mean_query_self_weight": round(self_weight, 5)}
        summary["text_maps"] = "each feature-map position through attnpool v_proj then c_proj (MaskCLIP)"
    else:
        summary["attention_map"] = {"file": attn_file, "kind": "attention rollout ([CLS] row)",
                                    "head_fusion": head_fusion, "discard_ratio": discard_ratio}
    write_json(out / "summary.json", summary)
    return summary


def _gather(model: nn.Module, inputs: Sequence[str], data: str | None, samples: int) -> tuple[Tensor, list[str]]:
    from ..data import load_image

    size = int(model.cfg.img_size)
    images, names = [load_image(p, size) for p in inputs], [Path(p).name for p in inputs]
    if not inputs and data is None:
        data = (getattr(model, "vitlab_meta", None) or {}).get("data")
    if data is not None:
        from ..data.image_text import build_image_text_data

        if samples < 1:
            raise VitlabError(f"--samples must be at least 1, got {samples}")
        val = build_image_text_data(data, size).val
        for i in torch.linspace(0, len(val) - 1, min(samples, len(val))).round().long().tolist():
            images.append(val.images[i])
            names.append(f"{data} val #{i}")
    if not images:
        raise VitlabError("no images: give image files or --data SPEC")
    return torch.stack(images), names


@torch.no_grad()
def attnpool_map(model: nn.Module, x: Tensor, head_fusion: str = "mean") -> Tensor:
    """A ResNet tower's attention pooling as a map: x (B, 3, H, W) normalised -> (B, gh, gw), the pooled (mean)
    query's weights on each grid position (its weight on itself dropped), fused over heads (mean, max or min) and
    renormalised so each map sums to 1 over the grid."""
    from .rollout import fuse_heads

    pool = model.visual.attnpool
    weights = pool.attention_weights(model.visual.forward_features(x)).float()[:, :, 1:]   # (B, heads, gh*gw)
    fused = fuse_heads(weights[..., None], head_fusion)[..., 0]                            # (B, gh*gw)
    fused = fused / fused.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    gh, gw = model.patch_grid()
    return fused.view(len(x), gh, gw)                                                      # (B, gh, gw)


def _rollout(model: nn.Module, x: Tensor, head_fusion: str, discard_ratio: float) -> Tensor:
    from .recording import record_attention
    from .rollout import rollout_map

    visual = model.visual                       # our ViT: the classifier's rollout applies as it is
    _, attentions = record_attention(visual, x)
    return rollout_map([a.cpu() for a in attentions], tuple(visual.patch_embed.grid_size),
                       int(visual.num_prefix_tokens), head_fusion, discard_ratio)


def plot_text_maps(images: Tensor, maps: Tensor, sim: Tensor, names: Sequence[str], prompts: Sequence[str],
                   path: Path) -> Path:
    """One row per image: the image, then its map (B, T, gh, gw) for each prompt, one colour scale per image."""
    rows = []
    for i, image in enumerate(images):
        lo, hi = float(maps[i].min()), float(maps[i].max())
        row = [(plots.image_hwc(image), f"{names[i]}\nmaps {lo:.2f} (blue) to {hi:.2f} (red)")]
        row += [(plots.overlay(image, maps[i, t], limits=(lo, hi)), f"{_short(p)}\nimage cos {float(sim[i, t]):.2f}")
                for t, p in enumerate(prompts)]
        rows.append(row)
    fig = plots.figure_rows(images, rows, "Text-conditioned maps: patch tokens (final norm + projection) vs prompt")
    return plots.save_figure(fig, path)


def plot_similarity_matrix(sim: Tensor, images: Tensor, names: Sequence[str], prompts: Sequence[str],
                           path: Path) -> Path:
    """The (images x prompts) cosine matrix, each cell annotated, a thumbnail of each image beside its row."""
    n_img, n_txt = sim.shape
    fig = plots.new_figure(2.0 + 0.9 * n_txt, 1.0 + 0.75 * n_img)
    grid = fig.add_gridspec(1, 2, width_ratios=(1, max(n_txt, 1)))
    thumbs = fig.add_subplot(grid[0, 0])
    strip = np.concatenate([plots.image_hwc(img) for img in images], axis=0)       # (B*H, W, 3)
    thumbs.imshow(strip, extent=(0, 1, n_img - 0.5, -0.5), aspect="auto")
    thumbs.set_yticks(range(n_img), [_short(n, 24) for n in names], fontsize=7)
    thumbs.set_xticks([])
    ax = fig.add_subplot(grid[0, 1])
    im = ax.imshow(sim.numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(n_txt), [_short(p) for p in prompts], rotation=40, ha="right", fontsize=7)
    ax.set_yticks([])
    for i in range(n_img):
        for t in range(n_txt):
            ax.text(t, i, f"{float(sim[i, t]):.2f}", ha="center", va="center", fontsize=6, color="white")
    fig.colorbar(im, ax=ax, fraction=0.04, label="cosine")
    fig.suptitle("Image-prompt cosine similarity (logits_per_image / logit scale)", fontsize=9)
    return plots.save_figure(fig, path)


def _short(text: str, width: int = 20) -> str:
    return text if len(text) <= width else text[:width - 1] + "\u2026"
