"""timm compatibility without timm: golden files written by timm itself (tests/fixtures/make_timm_golden.py, run in
the oracle venv of `make oracle`; regenerate with `make timm-golden`) hold timm's state dict of a tiny random-weight
model per family and timm's logits on a fixed input (one hybrid ViT as a Google .npz instead, with the logits of the
model timm's own .npz loader filled from it). vitlab's converters must reproduce those logits, and vitlab's
position-embedding resample must equal timm's resample_abs_pos_embed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vitlab.checkpoint import load_model
from vitlab.layers.pos_embed import resample_pos_embed

GOLDEN = Path(__file__).parents[1] / "fixtures" / "timm"
CASES = sorted(p.name.removesuffix(".json") for p in GOLDEN.glob("*.json"))


def test_every_family_has_a_golden_file():
    assert {"vit_micro", "vit_micro_gap", "deit_distilled", "swin", "convnext", "mixer", "convmixer", "resnet_basic",
            "resnet_bottleneck", "vit_hybrid_bit", "vit_hybrid_npz"} <= set(CASES)


@pytest.mark.parametrize("key", CASES)
def test_logits_equal_timm(key):
    meta = json.loads((GOLDEN / f"{key}.json").read_text())
    io = load_file(GOLDEN / f"{key}.io.safetensors")
    model = load_model(GOLDEN / meta.get("file", f"{key}.safetensors"), **meta["load"])   # a state dict or .npz
    with torch.no_grad():
        out = model(io["input"])
    out = out["logits"] if isinstance(out, dict) else out          # a distilled DeiT's named outputs
    torch.testing.assert_close(out, io["logits"], atol=1e-4, rtol=0)


def test_hybrid_golden_is_the_bit_backbone():
    model = load_model(GOLDEN / "vit_hybrid_bit.safetensors")
    assert model.vitlab_name == "vit_small_r26_s32_224"
    assert model.cfg.extra["backbone"] == {"kind": "bit", "stem_width": 32, "layers": (1, 1), "widths": (128, 256)}


def test_hybrid_npz_golden_is_read_as_written():
    """The Google-layout hybrid (ResNet arrays at the top level) becomes the BiT hybrid; the head count comes from
    the per-head kernels (width 64 is in no table); vitlab's writer gives back the very arrays timm read."""
    import numpy as np

    from vitlab.convert.npz import vit_to_npz_arrays

    model = load_model(GOLDEN / "vit_hybrid_npz.npz")
    assert model.vitlab_name == "vit_small_r26_s32_224"
    assert (model.cfg.dim, model.cfg.num_heads, model.cfg.img_size) == (64, 4, 32)
    assert model.cfg.extra["backbone"] == {"kind": "bit", "stem_width": 32, "layers": (2, 1), "widths": (128, 128)}
    with np.load(GOLDEN / "vit_hybrid_npz.npz") as f:
        golden = {k: f[k] for k in f.files}
    written = vit_to_npz_arrays(model)
    assert written.keys() == golden.keys()
    for k in golden:
        np.testing.assert_array_equal(written[k], golden[k], err_msg=k)


@pytest.mark.parametrize("prefix", [1, 2])
@pytest.mark.parametrize("grid", [(12, 12), (5, 5), (6, 10)])
def test_resample_equals_timm(prefix, grid):
    tables = load_file(GOLDEN / "pos_embed_resample.safetensors")
    ours = resample_pos_embed(tables[f"prefix{prefix}"], grid, num_prefix_tokens=prefix, antialias=True)
    torch.testing.assert_close(ours, tables[f"prefix{prefix}_{grid[0]}x{grid[1]}"], atol=1e-6, rtol=0)
