"""Google's hybrid ViT .npz (the paper's R50+ViT-B_16 layout: ResNet arrays `conv_root/`, `block{s}/unit{j}/` beside
the ViT's), without JAX or timm: element placement on an arange-filled file, writer/reader inverse, Google's
position zoom on the feature-map grid, the CLI, and the errors. Logits against timm's own .npz loader: the golden
file vit_hybrid_npz (test_timm_golden.py) and the live oracle (test_timm_oracle.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vitlab
from vitlab.checkpoint import load_model
from vitlab.cli import main as cli_main
from vitlab.convert import read_checkpoint
from vitlab.convert.npz import vit_to_npz_arrays
from vitlab.errors import VitlabError

from .helpers import randomize_

BB = "patch_embed.backbone"
BACKBONE = dict(kind="bit", layers=(2, 1), widths=(128, 128), stem_width=32)
IMG = 32                                                     # stride 8 (two stages): a 4x4 token grid


def tiny_hybrid(seed: int = 0, **kw) -> torch.nn.Module:
    """A vitlab BiT hybrid with trained-like random weights (norm scales around 1)."""
    torch.manual_seed(seed)
    model = vitlab.create_model("vit_small_r26_s32_224", depth=1, dim=64, num_heads=4, num_classes=3,
                                img_size=IMG, extra={"backbone": BACKBONE}, **kw)
    return randomize_(model, seed)


def _save(tmp_path, arrays, name="hybrid.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _arange_like(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every element distinct (and known) in every array, shapes kept."""
    out, start = {}, 0
    for k, v in arrays.items():
        out[k] = (np.arange(v.size, dtype=np.float32) + start).reshape(v.shape)
        start += v.size
    return out


def test_each_resnet_array_lands_where_google_names_it(tmp_path):
    g = _arange_like(vit_to_npz_arrays(tiny_hybrid()))
    g["block1/unit2/gn2/scale"] = g["block1/unit2/gn2/scale"].reshape(1, 1, 1, -1)   # the older BiT shape
    sd = read_checkpoint(_save(tmp_path, g)).state_dict
    t = {k: torch.from_numpy(v) for k, v in g.items()}
    for ours, google in [(f"{BB}.stem.conv.weight", "conv_root/kernel"),
                         (f"{BB}.stages.0.blocks.0.downsample.conv.weight", "block1/unit1/conv_proj/kernel"),
                         (f"{BB}.stages.0.blocks.1.conv2.weight", "block1/unit2/conv2/kernel"),
                         (f"{BB}.stages.1.blocks.0.conv1.weight", "block2/unit1/conv1/kernel"),
                         (f"{BB}.stages.1.blocks.0.conv3.weight", "block2/unit1/conv3/kernel"),
                         ("patch_embed.proj.weight", "embedding/kernel")]:
        kern = t[google]                                                        # (kh, kw, in, out)
        kh, kw, cin, cout = kern.shape
        for o, c, y, x in [(0, 0, 0, 0), (cout - 1, cin - 1, kh - 1, kw - 1), (cout // 2, cin // 3, kh // 2, 0)]:
            assert sd[ours][o, c, y, x] == kern[y, x, c, o], (ours, google)
    for ours, google in [(f"{BB}.stem.norm.weight", "gn_root/scale"), (f"{BB}.stem.norm.bias", "gn_root/bias"),
                         (f"{BB}.stages.0.blocks.0.downsample.norm.weight", "block1/unit1/gn_proj/scale"),
                         (f"{BB}.stages.0.blocks.1.norm2.weight", "block1/unit2/gn2/scale"),
                         (f"{BB}.stages.1.blocks.0.norm3.bias", "block2/unit1/gn3/bias")]:
        assert torch.equal(sd[ours], t[google].reshape(-1)), (ours, google)
    assert f"{BB}.stages.0.blocks.1.downsample.conv.weight" not in sd          # no projection: same width, stride 1


def test_checkpoint_settings_follow_the_arrays(tmp_path):
    ckpt = read_checkpoint(_save(tmp_path, vit_to_npz_arrays(tiny_hybrid())))
    args = ckpt.model_args
    assert (args["dim"], args["num_heads"], args["depth"], args["img_size"], args["norm_eps"]) == (64, 4, 1, IMG, 1e-6)
    assert args["extra"]["backbone"] == BACKBONE
    assert (ckpt.interpolation, ckpt.antialias) == ("bilinear", False)
    assert ckpt.meta["source_format"] == "npz (vision_transformer, hybrid)"


def test_write_then_read_is_the_same_model(tmp_path):
    model = tiny_hybrid()
    arrays = vit_to_npz_arrays(model)
    assert {"conv_root/kernel", "block1/unit2/conv3/kernel", "block2/unit1/gn_proj/bias", "embedding/kernel",
            "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"} <= arrays.keys()
    assert not any(k.startswith(("block0", "block3")) or "/unit0/" in k or "block2/unit2" in k for k in arrays)
    again = load_model(_save(tmp_path, {"opt/target/" + k: v for k, v in arrays.items()}))  # a training state
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        expected = model(x)
        assert expected.std() > 0.1
        torch.testing.assert_close(again(x), expected, atol=0, rtol=0)
    assert again.cfg.extra["backbone"] == BACKBONE


def test_new_size_zooms_the_feature_grid_like_google(tmp_path):
    from scipy.ndimage import zoom

    arrays = vit_to_npz_arrays(tiny_hybrid())
    model = load_model(_save(tmp_path, arrays), img_size=48)                 # grid 4x4 -> 6x6 (stride 8)
    table = arrays["Transformer/posembed_input/pos_embedding"][0]            # (1 + 16, dim)
    expected = zoom(table[1:].reshape(4, 4, -1).astype(np.float64), (6 / 4, 6 / 4, 1), order=1).reshape(36, -1)
    got = model.pos_embed.detach()[0]
    assert got.shape == (1 + 36, 64)
    np.testing.assert_allclose(got[1:].numpy(), expected, atol=1e-6)
    assert torch.equal(got[0], torch.from_numpy(table[0]))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 48)).shape == (1, 3)


def test_cli_converts_a_hybrid_npz(tmp_path, capsys):
    model = tiny_hybrid()
    src = _save(tmp_path, vit_to_npz_arrays(model))
    assert cli_main(["convert", str(src), str(tmp_path / "out")]) == 0
    assert "vit_small_r26_s32_224" in capsys.readouterr().out
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "out")(x), model(x), atol=0, rtol=0)


def test_unknown_resnet_arrays_are_refused(tmp_path):
    arrays = vit_to_npz_arrays(tiny_hybrid())
    arrays["block1/unit1/se/kernel"] = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(VitlabError, match="ResNet arrays this hybrid converter does not support: block0/unit0/se"):
        read_checkpoint(_save(tmp_path, arrays))


def test_a_zero_index_is_not_google_counting(tmp_path):
    arrays = vit_to_npz_arrays(tiny_hybrid())
    arrays["block0/unit1/conv1/kernel"] = arrays.pop("block1/unit1/conv1/kernel")
    with pytest.raises(VitlabError, match="counted from 1"):
        read_checkpoint(_save(tmp_path, arrays))


def test_a_stem_only_hybrid_is_refused(tmp_path):
    arrays = {k: v for k, v in vit_to_npz_arrays(tiny_hybrid()).items() if not k.startswith("block")}
    with pytest.raises(VitlabError, match="stem-only hybrid"):
        read_checkpoint(_save(tmp_path, arrays))


def test_the_writer_refuses_what_google_never_published():
    with pytest.raises(VitlabError, match="only a BiT hybrid in the vision_transformer layout"):
        vit_to_npz_arrays(tiny_hybrid(), "big_vision")
    bn = vitlab.create_model("vit_micro_r8_s4_32")                            # batch-norm ResNet backbone
    with pytest.raises(VitlabError, match="only a BiT hybrid"):
        vit_to_npz_arrays(bn)
