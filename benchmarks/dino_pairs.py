"""`vitlab study dino`'s table and verdicts for DINO and supervised runs trained by hand: one `vitlab train` DINO run
and one supervised run per seed (same data, schedule and --img-size), scored by the study's own `measure` (k-NN
top-1 and 60%-mass attention Jaccard of both, and of the untrained backbone under the seed) and `summarize`.
For schedules or image sizes the study's CLI does not offer (e.g. 80 epochs at 32 px).

    python benchmarks/dino_pairs.py --pair 0 RUNS/dino_s0 RUNS/sup_s0 --pair 1 RUNS/dino_s1 RUNS/sup_s1 --out DIR

Each run's config.json gives the data spec, epochs, batch and --img-size; the pairs must agree on them. Writes
DIR/dino.json (the study's layout) and DIR/dino_attention.png (the first pair), and prints the verdicts.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vitlab.checkpoint_files import read_config
from vitlab.errors import VitlabError
from vitlab.studies.dino import attention_figure, measure, summarize


def run_config(run: str) -> dict[str, Any]:
    """The `train` block of a run's config.json (vitlab's own reader), with its model arguments."""
    cfg = read_config(run)
    if "train" not in cfg:
        raise VitlabError(f"{run}: not a `vitlab train` run (its config.json has no train block)")
    return {**cfg["train"], "model_args": cfg["train"].get("model_args") or {}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", nargs=3, action="append", required=True, metavar=("SEED", "DINO_RUN", "SUP_RUN"))
    p.add_argument("--out", required=True)
    args = p.parse_args()
    per_seed, first = [], None
    for seed, dino_dir, sup_dir in args.pair:
        try:
            dino, sup = run_config(dino_dir), run_config(sup_dir)
        except VitlabError as e:
            p.error(str(e))
        differ = [k for k in ("data", "epochs", "batch_size", "img_size", "seed") if dino[k] != sup[k]]
        if differ or dino["seed"] != int(seed):
            p.error(f"--pair {seed}: " + (f"the two runs differ in {differ}" if differ
                                          else f"the runs' seed is {dino['seed']}, not {seed}"))
        first = first or (dino, sup, dino_dir, sup_dir)
        metrics = json.loads((Path(dino_dir) / "metrics.json").read_text())
        sup_metrics = json.loads((Path(sup_dir) / "metrics.json").read_text())
        untrained = (sup["model"], {**sup["model_args"], "img_size": sup["img_size"]})
        row = {"seed": int(seed), "collapsed": metrics["collapsed"], "teacher_entropy": metrics["teacher_entropy"],
               "supervised_val_top1": sup_metrics["val_top1"], "dino_train_s": metrics["wall_time_s"],
               "supervised_train_s": sup_metrics["wall_time_s"],
               **measure(dino_dir, sup_dir, dino["data"], dino["img_size"], int(seed), untrained=untrained)}
        per_seed.append(row)
        print(json.dumps({k: row[k] for k in ("seed", "dino", "supervised", "untrained")}), flush=True)
    dino, sup, dino_dir, sup_dir = first
    dino_args = {k: v for k, v in dino["model_args"].items() if k != "img_size"}
    # summarize reads these fields only for its command line, which is replaced below by this script's own
    ns = argparse.Namespace(quick=False, train_images=0, lr=dino["lr"], model_arg=[], background="", objects="")
    results = summarize(per_seed, ns, dino["model"], sup["model"], dino["data"], dino["epochs"], dino["batch_size"],
                        dino_args)
    results["img_size"] = dino["img_size"]
    results["command"] = "python benchmarks/dino_pairs.py " + " ".join(
        f"--pair {s} {d} {u}" for s, d, u in args.pair) + f" --out {args.out}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dino.json").write_text(json.dumps(results, indent=2) + "\n")
    attention_figure(Path(dino_dir), Path(sup_dir), dino["data"], dino["img_size"], per_seed[0]["seed"],
                     out / "dino_attention.png")
    t = results["table"]
    print(f"k-NN DINO {t['dino']['knn_top1']}, supervised {t['supervised']['knn_top1']}, untrained "
          f"{t['untrained']['knn_top1']}; ratio {results['knn_ratio']:.3f} (target {results['knn_target']})")
    for key in ("claim", "claim_mean_head", "dino_above_untrained"):
        c = results[key]
        print(f"{key}: {c['difference']:+.4f} (se {c['standard_error']}): {c['verdict']}")


if __name__ == "__main__":
    main()
