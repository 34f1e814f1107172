"""Study: learned position embeddings learn the 2-D grid (ViT, Dosovitskiy et al. 2021, Fig. 7 centre).

The claim: although a ViT's position embeddings are free vectors with no notion of rows and columns, after
training near patches have similar embeddings (and the same row / column too) - the picture of Fig. 7 centre. Here
it is a number: Spearman's rank correlation between the cosine similarity of two patches' embeddings and the
Euclidean distance of the patches on the grid, over all pairs. Trained: strongly negative (near = similar); at
initialisation (random normal, std 0.02): about 0. The paper's ViT-L/32 was trained on ImageNet-21k/JFT at 224 px
(7x7 grid); here a micro ViT with patch 4 on 32 px `shapes` (8x8 grid, 64 tokens), --seeds seeds, and the verdict
(vitlab.studies.verdict, paired over seeds) on "trained correlation < initial correlation".

    vitlab study pos-embed                                   # 3 seeds x 30 epochs on 3000 shapes: ~20 min
    vitlab study pos-embed --reuse-from runs/study-attention-distance   # measure its trained ViTs: seconds
    vitlab study pos-embed --quick                           # 16 px, one epoch: a smoke test (no verdict)
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_model
from ..checks import int_arg, text_arg
from ..errors import VitlabError
from ..explain.pos_embed import position_embedding_similarity
from ..registry import create_model
from . import _common as common
from .verdict import compare

log = logging.getLogger(__name__)

NAME = "pos-embed"
HELP = "rank correlation of position-embedding similarity with grid distance, trained vs initial (ViT Fig. 7)"
CLAIM = "the learned position embeddings encode the 2-D image topology: close patches have similar embeddings"
PAPER = "Dosovitskiy et al., An Image is Worth 16x16 Words, ICLR 2021, Fig. 7 (centre)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="shapes", type=text_arg, help="training data spec (default generated shapes)")
    p.add_argument("--img-size", type=int_arg(at_least=8), default=32)
    p.add_argument("--train-per-class", type=int_arg(at_least=1), default=500)
    p.add_argument("--vit", type=text_arg, default="vit_micro_patch4_32", help="ViT model name to train")
    p.add_argument("--epochs", type=int_arg(at_least=1), default=30)
    p.add_argument("--reuse-from", type=text_arg, default=None,
                   help="a study output with vit-seed<N>/ run directories (attention-distance's) to measure")
    common.add_seed_arguments(p)


def grid_distance_correlation(similarity: torch.Tensor) -> float:
    """Spearman's rho between cosine similarity and grid distance over all pairs of distinct patches (scipy's,
    with average ranks: grid distances tie often)."""
    from scipy.stats import spearmanr

    gh, gw = similarity.shape[:2]
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], 1).float()                 # (N, 2)
    dist = torch.cdist(pos, pos)                                                   # (N, N)
    sim = similarity.reshape(gh * gw, gh * gw)
    upper = torch.triu_indices(gh * gw, gh * gw, offset=1)
    return float(spearmanr(sim[upper[0], upper[1]].numpy(), dist[upper[0], upper[1]].numpy()).statistic)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args = common.quick_args(args, NAME, add_arguments, img_size=common.QUICK_SIZE, epochs=1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = common.seed_list(args)
    data = None if args.reuse_from else common.study_data(args, out, args.img_size, args.train_per_class)
    per_seed, first = [], None
    for seed in seeds:
        run_dir = Path(args.reuse_from) / f"vit-seed{seed}" if args.reuse_from else out / f"vit-seed{seed}"
        if args.reuse_from and not (run_dir / "model.safetensors").is_file():
            raise VitlabError(f"--reuse-from {args.reuse_from}: no trained model in {run_dir}")
        if not args.reuse_from:
            common.train(args.vit, data, run_dir, epochs=args.epochs, seed=seed, img_size=args.img_size,
                         quick=args.quick)
        model = load_model(run_dir).eval()
        torch.manual_seed(seed)
        init = create_model(model.vitlab_name, **model.vitlab_args).eval()
        sim_trained, sim_init = position_embedding_similarity(model), position_embedding_similarity(init)
        per_seed.append({"seed": seed, "trained": grid_distance_correlation(sim_trained),
                         "initial": grid_distance_correlation(sim_init)})
        first = first or (sim_trained, sim_init)
    trained, initial = [s["trained"] for s in per_seed], [s["initial"] for s in per_seed]
    claim = common.claim("trained position embeddings: similarity falls with grid distance (Spearman rho below "
                         "the initial embeddings')", PAPER,
                         compare(trained, initial, paired=True, higher_is_claimed=False, quick=args.quick))
    results = {"study": NAME, "quick": args.quick, "note": common.QUICK_NOTE if args.quick else None,
               "command": common.command_line(NAME, args, add_arguments), "seeds": seeds, "data": args.data,
               "img_size": args.img_size, "grid": list(first[0].shape[:2]), "claims": [claim],
               "table": [{"embeddings": "trained", "Spearman rho (similarity vs grid distance)":
                          common.summary(trained, 3)["text"]},
                         {"embeddings": "at initialisation", "Spearman rho (similarity vs grid distance)":
                          common.summary(initial, 3)["text"]}],
               "per_seed": per_seed}
    return common.finish(results, out, NAME, log=log, difference="%+.3f",
                         plots={"pos_embed.png": lambda path: plot(first, trained, initial, results, path)})


def plot(first: tuple[torch.Tensor, torch.Tensor], trained: list[float], initial: list[float],
         results: dict[str, Any], path: Path) -> None:
    import matplotlib

    from ..explain.plots import mosaic, new_figure

    fig = new_figure(13.0, 4.4)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    for k, (sim, title) in enumerate(zip(first, (f"trained (seed {results['seeds'][0]})", "at initialisation"))):
        ax = fig.add_subplot(1, 3, k + 1)
        gh, gw = sim.shape[:2]
        im = ax.imshow(mosaic(sim.reshape(gh * gw, gh, gw).numpy(), gw, gap=1), cmap=cmap, vmin=-1, vmax=1,
                       interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"position-embedding similarity, {title}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    ax = fig.add_subplot(1, 3, 3)
    for i, (label, values) in enumerate((("trained", trained), ("initial", initial))):
        common.errorbar_plot(ax, [i], [values], label, color=f"C{i}")
    ax.set_xticks([0, 1])
    ax.set_xticklabels(["trained", "initial"])
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_ylabel("Spearman rho: similarity vs grid distance\n(mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.suptitle(common.quick_title(f"{results['data']} at {results['img_size']} px, {len(results['seeds'])} "
                                    "seed(s)", results["quick"]), fontsize=10)
    common.save(fig, path)
