"""What a DINO run's features encode on single-object `scenes`: weighted k-NN top-1 (k 20, T 0.07, as `vitlab eval
--protocol knn`) of the frozen [CLS] features on five labels of the same images: the shape (what the study
scores), the colour (8 palette names), the size (small/large), the position (the image quadrant of the object's
centre) and the background's brightness (four bins of its mean grey level; chance 25%). A run that learned
nothing sits at each label's untrained level; one that learned a nuisance attribute rises on it and not on the
shape.

    python benchmarks/dino_attributes.py RUN [RUN ...] [--train-images 8000] [--untrained vit_micro_patch8_64]
                                         [--background textured|plain] [--objects default|large] [--img-size 64]

Writes one JSON line per model to stdout (and --json PATH). Data: `scenes:N[,background=plain][,object_size=large]`
as `vitlab train` builds it (seed 0, N train / N // 4 val, at --img-size: 64 px, or 32 for runs trained with
`--img-size 32`); the memory bank is the train split, the queries the val split.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

import torch

import vitlab
from vitlab.checkpoint import load_model
from vitlab.data.imageset import ImageSet
from vitlab.data.object_scenes import OBJECT_SIZES
from vitlab.data.scenes import PALETTE, SIZE_CLASSES, build_scenes
from vitlab.data.shapes import SHAPE_CLASSES
from vitlab.eval_protocols import extract_features, knn_top1


BRIGHTNESS_EDGES = (50.0, 75.0, 100.0)   # background grey levels are uniform in 25-125: four equal bins


def background_brightness(scenes: Any) -> torch.Tensor:
    """(N,) mean grey level of each image's background pixels (semantic mask 0)."""
    grey = scenes.images.float().mean(dim=1)                                      # (N, S, S)
    bg = (scenes.semantic_masks == 0).float()
    return (grey * bg).sum(dim=(1, 2)) / bg.sum(dim=(1, 2)).clamp_min(1)


def attribute_labels(scenes: Any) -> dict[str, torch.Tensor]:
    """{attribute: (N,) int64} of one-object scenes: shape, colour, size, centre quadrant and background
    brightness (four bins of the background's mean grey level)."""
    colours, sizes, half = list(PALETTE), list(SIZE_CLASSES), scenes.image_size / 2
    objs = [o[0] for o in scenes.objects]
    return {"shape": torch.tensor([o.label for o in objs]),
            "colour": torch.tensor([colours.index(o.colour) for o in objs]),
            "size": torch.tensor([sizes.index(o.size) for o in objs]),
            "quadrant": torch.tensor([int(o.cx >= half) + 2 * int(o.cy >= half) for o in objs]),
            "brightness": torch.bucketize(background_brightness(scenes), torch.tensor(BRIGHTNESS_EDGES))}


def measure(model: torch.nn.Module, train: Any, val: Any) -> dict[str, float]:
    sets = [ImageSet(SHAPE_CLASSES, [o[0].label for o in s.objects], s.image_size, images=s.images)
            for s in (train, val)]
    f_train, f_val = (extract_features(model, s) for s in sets)                        # (N, dim) each
    l_train, l_val = attribute_labels(train), attribute_labels(val)
    return {k: knn_top1(f_train, l_train[k], f_val, l_val[k]) for k in l_train}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="run directories (DINO or supervised checkpoints)")
    p.add_argument("--train-images", type=int, default=8000)
    p.add_argument("--untrained", action="append", default=[], help="registered model to score at init")
    p.add_argument("--background", default="textured", choices=["textured", "plain"],
                   help="the scenes' background (data spec scenes:N,background=plain)")
    p.add_argument("--objects", default="default", choices=sorted(OBJECT_SIZES),
                   help="the objects' sizes (data spec scenes:N,object_size=large)")
    p.add_argument("--img-size", type=int, default=64, help="the side the scenes are drawn at (the runs' --img-size)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    train, val = build_scenes(args.img_size, seed=0, n_train=args.train_images, n_val=max(1, args.train_images // 4),
                              max_objects=1, background=args.background, size_classes=OBJECT_SIZES[args.objects])
    rows = []
    for run in args.runs:
        rows.append({"model": run, **measure(load_model(run).eval(), train, val)})
        print(json.dumps(rows[-1]), flush=True)
    for name in args.untrained:
        torch.manual_seed(0)
        kw = {"weight_init": "jax"} if name.startswith("vit_") else {}      # the init the runs above start from
        model = vitlab.create_model(name, num_classes=6, img_size=args.img_size, **kw).eval()
        rows.append({"model": f"{name} (untrained, seed 0)", **measure(model, train, val)})
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
