"""`vitlab eval --checkpoint RUN_DIR --data SPEC`: top-1/top-5 of a checkpoint on a data set's validation split."""
from __future__ import annotations

import argparse
import json

from ..checks import device_arg, float_arg, int_arg, text_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on a data set")
    p.add_argument("--checkpoint", required=True, type=text_arg, help="run directory or checkpoint")
    p.add_argument("--data", default="digits", type=text_arg, help="data spec (its validation split is used)")
    p.add_argument("--split", choices=["val", "train"], default="val")
    p.add_argument("--batch-size", type=int_arg(at_least=1), default=256)
    p.add_argument("--device", type=device_arg, default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast (CPU included)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--beam-size", type=int_arg(at_least=1), default=None,
                   help="captioning/translation: beam width of the decoding scored (default 1, greedy)")
    p.add_argument("--length-penalty", type=float_arg(at_least=0.0), default=None,
                   help="captioning/translation beam search: GNMT length penalty alpha (default 0.6)")
    p.add_argument("--protocol", choices=("knn", "linear"), default=None,
                   help="frozen-feature protocol instead of the task's metrics: weighted k-NN (k 20, T 0.07) or a "
                        "linear probe on the [CLS] features (train split = bank / probe data, val = queries); any "
                        "checkpoint, DINO or supervised")
    p.set_defaults(func=run)


def evaluate_checkpoint(checkpoint: str, data: str, split: str = "val", batch_size: int = 256,
                        device: str = "auto", precision: str = "fp32", seed: int = 0, beam_size: int | None = None,
                        length_penalty: float | None = None) -> dict:
    """The checkpoint's task metrics (classification: top-1/top-5/loss; detection: COCO mAP) on one split;
    captioning/translation decode with `beam_size` (default greedy) and `length_penalty`."""
    from ..errors import VitlabError
    from ..predict import Predictor
    from ..runtime import resolve_device
    from ..tasks import task_of
    from ..tasks.base import decoding_options
    from ..train.run import TrainConfig

    if batch_size < 1:
        raise VitlabError(f"--batch-size must be at least 1, got {batch_size}")
    dev = resolve_device(device)
    pred = Predictor.load(checkpoint, dev, precision=precision)
    task = task_of(pred.model)
    decoding = decoding_options(task, beam_size, length_penalty)
    # checkpoint=: tasks whose data depend on the run (a video run's frame count) read it from its task extras
    bundle = task.build_data(TrainConfig(model=pred.info()["model"], data=data, seed=seed, checkpoint=checkpoint),
                             pred.image_size)
    if len(bundle.classes) != len(pred.classes):
        raise VitlabError(f"{data} has {len(bundle.classes)} classes but the checkpoint {len(pred.classes)}")
    split_set = bundle.val if split == "val" else bundle.train
    r = task.evaluate(pred.model, split_set, dev, precision, batch_size=batch_size, **decoding)
    extra = {k: r[k] for k in ("val_iou_per_class", "val_hd95") if k in r}     # segmentation
    return {"task": task.name, **{k: r[k] for k in task.epoch_metrics if k in r}, **extra, "images": len(split_set),
            "num_classes": len(bundle.classes),
            "skipped_images": len(bundle.skipped), **({"summary": r["summary"]} if "summary" in r else {})}


def run(args: argparse.Namespace) -> int:
    if args.protocol is not None:
        from ..errors import VitlabError
        from ..eval_protocols import evaluate_protocol

        if (args.beam_size, args.length_penalty) != (None, None):
            raise VitlabError("--beam-size/--length-penalty: not with --protocol (frozen image features, no decoding)")
        r = evaluate_protocol(args.checkpoint, args.data, args.protocol, device=args.device,
                              batch_size=args.batch_size)
        key = f"{args.protocol}_top1"
        print(json.dumps(r, indent=2) if args.json else
              f"{key} {r[key]:.2f}%  ({r['train_images']} train / {r['val_images']} val images, "
              f"{r['feature_dim']}-d features)")
        return 0
    m = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.batch_size, args.device, args.precision,
                            beam_size=args.beam_size, length_penalty=args.length_penalty)
    if args.json:
        print(json.dumps(m, indent=2))
    elif m["task"] == "classification":
        top5 = f"  top-5 {m['val_top5']:.2f}%" if m["num_classes"] > 5 else ""    # top-5 of <= 5 classes is 100%
        print(f"top-1 {m['val_top1']:.2f}%{top5}  loss {m['val_loss']:.4f}  "
              f"({m['images']} images, {m['skipped_images']} skipped)")
    else:
        if "summary" in m:
            print(m["summary"].rstrip())
        shown = "  ".join(f"{k} {v:.4f}" for k, v in m.items() if k.startswith("val_") and isinstance(v, float))
        print(f"{shown}  ({m['images']} images, {m['skipped_images']} skipped)")
        if "val_iou_per_class" in m:
            print("IoU per class: " + "  ".join(f"{name} {'-' if v is None else f'{v:.4f}'}"
                                                for name, v in m["val_iou_per_class"].items()))
    return 0
