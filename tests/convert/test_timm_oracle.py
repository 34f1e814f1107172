"""timm as a live oracle (`make oracle`: a venv with the CUDA torch from this disk, which runs on the CPU, and timm).
Skipped where timm does not import (.venv), except under VITLAB_ORACLE=1, where a missing timm fails.

Here: the hybrid ViT (BiT ResNet-v2 stem) in timm's own variants and at another size, ConvMixer on an input that
is no multiple of its patch, resample_abs_pos_embed at other grids, and the hybrid as a Google .npz (the layout of
the paper's R50+ViT-B_16.npz): timm reads Google .npz files but writes none, so tests/fixtures/google_npz.py writes
one from timm's state dict by the names timm's loader reads, timm loads it into a fresh model, and vitlab must give
that model's logits; vitlab's own writer must give a file timm reads the same way. (The plain-ViT .npz check is in
test_timm.py.) The other families' live
checks (vit_*, deit_* with distillation, swin_*, convnext_*, mixer_*, convmixer_*, resnet*) sit beside their
offline tests (test_timm.py, tests/models/test_timm_convnets.py, test_swin.py, tests/bench/test_throughput.py).

timm has no CvT and no MViT v1 (its mvitv2_* is MViT v2, with decomposed relative positions and residual pooling,
which vitlab does not implement), so those two families have no timm oracle; CvT is checked against HF transformers.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vitlab.checkpoint import load_model
from vitlab.convert.npz import vit_to_npz_arrays
from vitlab.layers.pos_embed import resample_pos_embed

from .helpers import randomize_

TOL = 1e-4


@pytest.fixture
def timm():
    if os.environ.get("VITLAB_ORACLE") == "1":
        import timm                                     # the oracle run: a missing timm is a failure, not a skip
        return timm
    return pytest.importorskip("timm", reason="timm does not import with .venv's CPU torch; `make oracle` runs this")




def _logits(model, x):
    with torch.no_grad():
        return model(x)


HYBRIDS = [("vit_small_r26_s32_224", 224, {}), ("vit_small_r26_s32_384", 384, {}),
           ("vit_base_r50_s16_384", 224, {"img_size": 224}), ("vit_base_r26_s32_224", 224, {}),
           ("vit_large_r50_s32_224", 224, {})]


@pytest.mark.parametrize("name,size,kw", HYBRIDS, ids=[h[0] for h in HYBRIDS])
def test_timm_hybrid_logits(tmp_path, timm, name, size, kw):
    """timm's own hybrid variant (full BiT backbone, one transformer block) loads logit-equal, named or not."""
    torch.manual_seed(0)
    ref = randomize_(timm.create_model(name, pretrained=False, depth=1, num_classes=5, **kw))
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    x = torch.randn(1, 3, size, size)
    expect = _logits(ref, x)
    ours = load_model(tmp_path / "w.pth", name=name)
    torch.testing.assert_close(_logits(ours, x), expect, atol=TOL, rtol=0)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    if name == "vit_small_r26_s32_224":                           # no name: recognised from the weights alone
        assert load_model(tmp_path / "w.pth").vitlab_name == name


def _timm_hybrid_to_google():
    """tests/fixtures/google_npz.py's writer (a script beside the golden files, not a package: loaded by path)."""
    path = Path(__file__).parents[1] / "fixtures" / "google_npz.py"
    spec = importlib.util.spec_from_file_location("google_npz", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.timm_hybrid_to_google


NPZ_HYBRIDS = [("vit_small_r26_s32_224", {}, "vit_small_r26_s32_224"),
               ("vit_base_r50_s16_384", {"img_size": 224}, "vit_base_r50_s16_224")]   # the paper's R50+ViT-B/16


@pytest.mark.parametrize("name,kw,ours_name", NPZ_HYBRIDS, ids=[h[0] for h in NPZ_HYBRIDS])
def test_hybrid_npz_read_by_timm_equals_ours(tmp_path, timm, name, kw, ours_name):
    """A hybrid .npz in Google's layout: timm's own loader and ours give the same logits; and the .npz vitlab
    writes is read by timm into the same model."""
    torch.manual_seed(0)
    build = lambda: timm.create_model(name, pretrained=False, depth=1, num_classes=5, **kw)  # noqa: E731
    ref = randomize_(build())
    x = torch.randn(1, 3, 224, 224)
    path = tmp_path / "google.npz"
    np.savez(path, **_timm_hybrid_to_google()(ref.state_dict(), ref.blocks[0].attn.num_heads))
    timm_npz = build()
    timm_npz.load_pretrained(str(path))
    expect = _logits(timm_npz.eval(), x)
    torch.testing.assert_close(expect, _logits(ref, x), atol=1e-5, rtol=0)      # the file holds ref's weights
    ours = load_model(path)                                                     # no name: read off the arrays
    assert ours.vitlab_name == ours_name
    torch.testing.assert_close(_logits(ours, x), expect, atol=TOL, rtol=0)

    np.savez(tmp_path / "vitlab.npz", **vit_to_npz_arrays(ours))
    timm_again = build()
    timm_again.load_pretrained(str(tmp_path / "vitlab.npz"))
    torch.testing.assert_close(_logits(timm_again.eval(), x), expect, atol=1e-5, rtol=0)


def test_hybrid_at_another_size_equals_timm_checkpoint_filter(tmp_path, timm):
    from timm.models.vision_transformer_hybrid import checkpoint_filter_fn

    torch.manual_seed(0)
    ref = randomize_(timm.create_model("vit_small_r26_s32_224", pretrained=False, depth=1, num_classes=5))
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    big = timm.create_model("vit_small_r26_s32_224", pretrained=False, depth=1, num_classes=5, img_size=288)
    big.load_state_dict(checkpoint_filter_fn(ref.state_dict(), big))
    ours = load_model(tmp_path / "w.pth", img_size=288)
    x = torch.randn(1, 3, 288, 288)
    torch.testing.assert_close(_logits(ours, x), _logits(big.eval(), x), atol=TOL, rtol=0)


def test_convmixer_floors_a_partial_patch_as_timm(tmp_path, timm):
    ref = randomize_(timm.create_model("convmixer_768_32", pretrained=False, num_classes=5))
    for name, b in ref.named_buffers():
        if name.endswith("running_var"):
            b.uniform_(0.5, 1.5)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    ours = load_model(tmp_path / "w.pth", name="convmixer_768_32")
    x = torch.randn(1, 3, 96, 96)                                # 96 = 13 * 7 + 5: timm's conv drops the 5
    torch.testing.assert_close(_logits(ours, x), _logits(ref, x), atol=TOL, rtol=0)


@pytest.mark.parametrize("prefix", [0, 1, 2])
@pytest.mark.parametrize("grid", [(20, 20), (9, 9), (10, 18)])
def test_resample_equals_timm(timm, prefix, grid):
    from timm.layers import resample_abs_pos_embed

    table = torch.randn(1, prefix + 14 * 14, 32, generator=torch.Generator().manual_seed(0))
    ours = resample_pos_embed(table, grid, num_prefix_tokens=prefix, antialias=True)
    torch.testing.assert_close(ours, resample_abs_pos_embed(table, list(grid), num_prefix_tokens=prefix),
                               atol=1e-6, rtol=0)
