"""Study: the 2015 captioner against the transformer one, and a CNN against a ViT encoder (Xu et al. 2015, "Show,
Attend and Tell": a CNN grid + an LSTM with soft attention; the lectures' transformer decoder with cross-attention).

A 2x2 on the generated `scenes` captions (64 px), every cell trained with the same recipe and the same epochs
(the same budget in steps, not in seconds: the LSTM and the ResNet are slower per step), for >= 2 seeds; a seed
fixes the generated scenes too, so the four models of one seed see the same images (paired comparisons):

                     transformer decoder              LSTM + soft attention (+ eq. 14, lambda 1)
    ViT encoder      caption_vit_micro_patch8_64      sat_lstm_vit_micro_patch8_64
    ResNet encoder   caption_resnet_micro_64          sat_lstm_resnet_micro_64

and a fifth row, the ResNet + LSTM without eq. 14's doubly stochastic penalty (lambda 0), for the paper's
statement that the penalty improves BLEU (Xu et al. § 4.2.1).

Table: val_bleu4, val_cider, val_grounding and val_grounding_uniform (greedy captions; see
vitlab.tasks.captioning) as mean ± std over seeds. Verdicts (vitlab.studies.verdict, paired over seeds): "the
transformer decoder beats the LSTM decoder on BLEU-4" for each encoder, and "attention is grounded:
val_grounding > val_grounding_uniform" for each model, and "eq. 14 (lambda 1) beats lambda 0 on BLEU-4" for the
ResNet + LSTM. Figure: captioning.png, the four scores with ±1 std error bars.

Settings, from timed trials (1 thread, nice 10, on the shared 2 cores). At load average 3.3-4.2 (2000
training scenes, 3 epochs) an epoch cost 2.9 / 4.0 / 4.2 / 6.2 ms per training image for ViT+transformer /
ResNet+transformer / ViT+LSTM / ResNet+LSTM, 17 ms for the four; at load 3.2-3.6 (3000 scenes, 2 epochs)
ViT+transformer took 1.15 and ResNet+LSTM 3.6 ms, about half. Each run adds ~4-8 s of scene generation, one
greedy evaluation of the 200 validation images per epoch and the report. Default: 3000 training / 200 validation
scenes (spec `scenes:3000,200`), 8 epochs, batch 32, lr 2e-3 (1 warm-up epoch, cosine), 2 seeds: 2 x 8 x 3000 x
9-17 ms = 7-14 min of training, ~10-17 min in all at those loads, less on 2 quiet cores: inside the 20-minute
budget. That is about a fifth of the README's 18-epoch x 6000-image run of one model, so the scores stay far
below the issue's targets; the study compares the designs at an equal small budget, it does not train any of
them to convergence.

    vitlab study captioning                      # 5 models x 2 seeds x 8 epochs: 13-21 min on 2 cores
    vitlab study captioning --seeds 3            # a firmer verdict, 15-26 min
    vitlab study captioning --quick              # 32 scenes, one epoch per model: a smoke test (no verdict)
"""
from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path
from typing import Any

from ..checks import float_arg, int_arg, text_arg
from ..io import atomic_path
from . import _common as common
from .verdict import INCONCLUSIVE, SMOKE_TEST, compare

log = logging.getLogger(__name__)

NAME = "captioning"
HELP = "ViT vs ResNet encoder x transformer vs LSTM (Show, Attend and Tell) decoder on scenes: BLEU-4, CIDEr, grounding"
CLAIM = ("a transformer decoder captions better than the 2015 LSTM with soft attention, and each word's attention "
         "falls on the object it names")
PAPER = ("Xu et al., Show, Attend and Tell, ICML 2015 (LSTM + soft attention, eq. 14); Vaswani et al., Attention "
         "Is All You Need, NeurIPS 2017 (the decoder)")

# label -> (model, encoder, decoder)
MODELS = {"ViT + transformer": ("caption_vit_micro_patch8_64", "ViT", "transformer"),
          "ResNet + transformer": ("caption_resnet_micro_64", "ResNet", "transformer"),
          "ViT + LSTM": ("sat_lstm_vit_micro_patch8_64", "ViT", "LSTM"),
          "ResNet + LSTM": ("sat_lstm_resnet_micro_64", "ResNet", "LSTM"),
          "ResNet + LSTM, λ 0": ("sat_lstm_resnet_micro_64", "ResNet", "LSTM")}
LAMBDA0 = "ResNet + LSTM, λ 0"                                    # the ResNet + LSTM without eq. 14
MODEL_ARGS = {LAMBDA0: {"doubly_stochastic": 0.0}}                # label -> constructor overrides
SCORES = ("val_bleu4", "val_cider", "val_grounding", "val_grounding_uniform")
QUICK_DATA, QUICK_BATCH = "scenes:32,8", 16


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="scenes:3000,200", type=text_arg,
                   help="scenes captions spec: scenes:N,M = N training, M validation scenes (default 3000,200)")
    p.add_argument("--epochs", type=int_arg(at_least=1), default=8, help="epochs of every model (same budget)")
    p.add_argument("--batch-size", type=int_arg(at_least=1), default=32)
    p.add_argument("--lr", type=float_arg(above=0.0), default=2e-3)
    common.add_seed_arguments(p, default_seeds=2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = common.seed_list(args)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in MODELS}
    for seed in seeds:
        for label, (model_name, _, _) in MODELS.items():
            tag = "-lambda0" if label in MODEL_ARGS else ""
            runs[label].append(train_one(model_name, args, out / f"{model_name}{tag}-seed{seed}", seed,
                                         MODEL_ARGS.get(label, {})))
            log.info("%s: %s seed %d: BLEU-4 %.3f  CIDEr %.3f  grounding %s (uniform %s)", NAME, label, seed,
                     runs[label][-1]["val_bleu4"], runs[label][-1]["val_cider"],
                     _fmt(runs[label][-1]["val_grounding"]), _fmt(runs[label][-1]["val_grounding_uniform"]))
    results = summarize(runs, args, seeds)
    return common.finish(results, out, NAME, log=log, plots={"captioning.png": lambda path: plot(results, path)},
                         difference=None)


def train_one(model_name: str, args: argparse.Namespace, run_dir: Path, seed: int,
              model_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """One run through the library's trainer; its final metrics and training seconds (metrics.csv)."""
    from ..train import TrainConfig, run_training

    epochs = 1 if args.quick else args.epochs
    cfg = TrainConfig(model=model_name, data=QUICK_DATA if args.quick else args.data, out=str(run_dir),
                      epochs=epochs, seed=seed, lr=args.lr, batch_size=QUICK_BATCH if args.quick else args.batch_size,
                      warmup_epochs=min(1.0, epochs / 5), label_smoothing=0.0, report=not args.quick,
                      model_args=dict(model_args or {}))
    t0 = time.perf_counter()
    metrics = run_training(cfg, overwrite=True)
    with open(run_dir / "metrics.csv", newline="") as f:
        train_s = sum(float(r["epoch_time_s"]) for r in csv.DictReader(f))
    return {"seed": seed, **{k: metrics.get(k) for k in SCORES}, "params": metrics.get("params"),
            "train_time_s": train_s, "wall_s": time.perf_counter() - t0}


def summarize(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace, seeds: list[int]) -> dict[str, Any]:
    table = {}
    for label, per_seed in runs.items():
        model_name, encoder, decoder = MODELS[label]
        row: dict[str, Any] = {"model": model_name, "model_args": MODEL_ARGS.get(label, {}), "encoder": encoder,
                               "decoder": decoder,
                               "params": per_seed[0]["params"], "epochs": 1 if args.quick else args.epochs}
        for key in SCORES:
            values = [r[key] for r in per_seed if r[key] is not None]
            cell = common.summary(values, digits=3) if values else None
            row[key] = cell["text"] if cell else "n/a (no object word generated)"
            row[f"{key}_mean"], row[f"{key}_std"] = (cell["mean"], cell["std"]) if cell else (None, None)
            row[f"{key}_per_seed"] = [r[key] for r in per_seed]
        row["train_time_s"] = sum(r["train_time_s"] for r in per_seed) / len(per_seed)
        table[label] = row
    claims = []
    for encoder in ("ViT", "ResNet"):
        a, b = runs[f"{encoder} + transformer"], runs[f"{encoder} + LSTM"]
        claims.append(common.claim(
            f"{encoder} encoder: the transformer decoder beats the LSTM decoder on BLEU-4", PAPER,
            compare([r["val_bleu4"] for r in a], [r["val_bleu4"] for r in b], paired=True, quick=args.quick)))
    if LAMBDA0 in runs:
        a, b = runs["ResNet + LSTM"], runs[LAMBDA0]
        claims.append(common.claim(
            "ResNet + LSTM: eq. 14's doubly stochastic penalty (λ 1) beats λ 0 on BLEU-4", PAPER,
            compare([r["val_bleu4"] for r in a], [r["val_bleu4"] for r in b], paired=True, quick=args.quick)))
    for label, per_seed in runs.items():
        claims.append(common.claim(f"{label}: attention is grounded (val_grounding > val_grounding_uniform)",
                                   PAPER, grounding_verdict(per_seed, args.quick)))
    return {"command": common.command_line(NAME, args, add_arguments), "quick": args.quick, "seeds": seeds,
            "data": QUICK_DATA if args.quick else args.data, "epochs": 1 if args.quick else args.epochs,
            "batch_size": QUICK_BATCH if args.quick else args.batch_size, "lr": args.lr,
            **({"note": common.QUICK_NOTE} if args.quick else {}),
            "claims": claims, "table": table, "runs": runs}


def grounding_verdict(per_seed: list[dict[str, Any]], quick: bool) -> dict[str, Any]:
    """compare(grounding, uniform share) paired over the seeds whose captions named an object (a seed whose
    captions name none has no grounding score); inconclusive when none did."""
    pairs = [(r["val_grounding"], r["val_grounding_uniform"]) for r in per_seed if r["val_grounding"] is not None]
    if not pairs:
        return {"difference": None, "standard_error": None, "paired": True, "n": [0, 0],
                "verdict": SMOKE_TEST if quick else INCONCLUSIVE, "note": "no generated word named an object"}
    result = compare([g for g, _ in pairs], [u for _, u in pairs], paired=True, quick=quick)
    if len(pairs) < len(per_seed):
        result["note"] = f"{len(per_seed) - len(pairs)} seed(s) named no object: left out"
    return result


def plot(results: dict[str, Any], path: Path) -> None:
    """BLEU-4, CIDEr and grounding (beside the uniform share) per model, mean ± 1 std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results["table"])
    rows = [results["table"][k] for k in labels]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    x = list(range(len(labels)))
    colours = ["tab:blue" if r["decoder"] == "transformer" else "tab:orange" for r in rows]
    for ax, key, title in ((axes[0], "val_bleu4", "BLEU-4"), (axes[1], "val_cider", "CIDEr-D")):
        ax.bar(x, [r[f"{key}_mean"] or 0.0 for r in rows], yerr=[r[f"{key}_std"] or 0.0 for r in rows],
               capsize=4, color=colours)
        ax.set_title(title)
    ax = axes[2]
    width = 0.38
    ax.bar([i - width / 2 for i in x], [r["val_grounding_mean"] or 0.0 for r in rows], width,
           yerr=[r["val_grounding_std"] or 0.0 for r in rows], capsize=4, label="attention inside the named object")
    ax.bar([i + width / 2 for i in x], [r["val_grounding_uniform_mean"] or 0.0 for r in rows], width,
           yerr=[r["val_grounding_uniform_std"] or 0.0 for r in rows], capsize=4, color="lightgray",
           label="uniform attention's share")
    ax.set_title("grounding")
    ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(x, [label.replace(" + ", "\n+ ") for label in labels], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    n = len(results["seeds"])
    fig.suptitle(common.quick_title(f"captioning on {results['data']}, {results['epochs']} epoch(s) each, mean ± std "
                                    f"over {n} seed{'s' if n > 1 else ''} (blue: transformer, orange: LSTM)",
                                    results["quick"]), fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
