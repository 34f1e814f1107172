"""`vitlab zero-shot --checkpoint CLIP_RUN --data SPEC [--classes a,b,...] [--template "a photo of a {}"]...`:
classify a labelled data set with a CLIP checkpoint from text prompts alone (prompt ensembling over the templates)."""
from __future__ import annotations

import argparse
import json

from ..checks import device_arg, text_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zero-shot", help="classify images with a CLIP checkpoint from class-name prompts")
    p.add_argument("--checkpoint", required=True, type=text_arg, help="CLIP run directory or converted checkpoint")
    p.add_argument("--data", default="scenes", type=text_arg, help="labelled data spec (scenes, shapes, a folder)")
    p.add_argument("--classes", default=None, type=text_arg,
                   help="comma-separated class names in the data's label order (default: the data's names)")
    p.add_argument("--template", action="append", default=None, type=text_arg,
                   help="prompt with {} for the class name; repeat to ensemble (default: the checkpoint's)")
    p.add_argument("--ensemble", choices=("mean", "prob"), default=None,
                   help="combine a class's prompts: mean = CLIP's average of the prompt embeddings, prob = sum of "
                        "the prompts' probabilities (default: the checkpoint's; prob for scenes runs)")
    p.add_argument("--split", choices=("val", "train"), default="val")
    p.add_argument("--device", type=device_arg, default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import VitlabError
    from ..tasks.contrastive import zero_shot_evaluate

    classes = None
    if args.classes is not None:
        classes = [c.strip() for c in args.classes.split(",")]
        if not all(classes):
            raise VitlabError(f"--classes: an empty class name in {args.classes!r}")
    r = zero_shot_evaluate(args.checkpoint, args.data, classes=classes, templates=args.template, split=args.split,
                           device=args.device, precision=args.precision, ensemble=args.ensemble)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"zero-shot on {r['data']} ({r['split']}, {r['images']} images, {len(r['classes'])} classes, "
              f"{len(r['templates'])} templates, {r['ensemble']} ensemble): top-1 {r['top1']:.1f}%  "
              f"top-5 {r['top5']:.1f}%  (chance {r['chance']:.1f}%)")
        if r.get("classes_not_in_vocabulary"):
            print(f"class names with words the tokenizer does not know: {', '.join(r['classes_not_in_vocabulary'])}")
    return 0
