"""MONAI's UNETR is the oracle: its state dict loads into ours (format detected by its keys, architecture read off
the tensors) and computes the same logits, 2-D and 3-D; the head count comes from num_heads when needed."""
from __future__ import annotations

import pytest
import torch

import vitlab
from vitlab.checkpoint import convert_checkpoint, load_model
from vitlab.convert import read_checkpoint
from vitlab.errors import VitlabError

monai_nets = pytest.importorskip("monai.networks.nets")


def _monai(spatial_dims: int, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    args = dict(in_channels=2, out_channels=3, img_size=32, feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4,
                spatial_dims=spatial_dims)
    net = monai_nets.UNETR(**{**args, **kw}).eval()
    with torch.no_grad():               # instance norm without affine has no parameters; randomise the rest fully
        for p in net.parameters():
            p.normal_(std=0.2)
    return net


@pytest.mark.parametrize("spatial_dims,kw", [(3, {}), (2, {}), (2, dict(norm_name="batch", qkv_bias=True)),
                                              (3, dict(res_block=False, img_size=(48, 48, 48)))])
def test_logits_equal_monai(tmp_path, spatial_dims, kw):
    ref = _monai(spatial_dims, **kw)
    path = tmp_path / "unetr.pth"
    torch.save(ref.state_dict(), path)
    ours = vitlab.create_model("unetr_b16_3d_96" if spatial_dims == 3 else "unetr_b16_2d_224",
                               checkpoint_path=path, num_heads=4).eval()
    assert ours.cfg.spatial_dims == spatial_dims and ours.cfg.dim == 48 and ours.cfg.feature_size == 8
    side = 48 if "img_size" in kw else 32
    torch.manual_seed(1)
    x = torch.randn(2, 2, *(side,) * spatial_dims)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)


def test_format_detected_and_converted(tmp_path):
    ref = _monai(3, num_heads=12, hidden_size=48)
    path = tmp_path / "unetr.pth"
    torch.save(ref.state_dict(), path)
    ckpt = read_checkpoint(path)
    assert ckpt.meta["source_format"] == "monai-unetr" and ckpt.model == "unetr_b16_3d_96"
    assert ckpt.model_args["num_heads"] == 12 and ckpt.model_args["img_size"] == 32    # MONAI's default heads
    net = convert_checkpoint(path, tmp_path / "out")
    again = load_model(tmp_path / "out")
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), ref(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(net(x), again(x))


def test_head_count_error_names_the_option(tmp_path):
    ref = _monai(2, hidden_size=40, num_heads=5)                  # 40 is not divisible by MONAI's default 12
    path = tmp_path / "unetr.pth"
    torch.save(ref.state_dict(), path)
    with pytest.raises(VitlabError, match=r"hidden size 40 is not divisible by 12 heads .*--num-heads"):
        read_checkpoint(path)
    ours = load_model(path, num_heads=5)
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)
