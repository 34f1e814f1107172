"""Segmentation models (U-Net, UNETR 2-D/3-D, TransUNet, SETR-naive): the task contract, skip shapes against the
official designs, the papers' parameter counts, gradients, learning, attention recording, ViT initialisation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.explain.recording import record_attention
from vitlab.models.vit_encoder import init_encoder_from
from vitlab.registry import model_task

SMALL = ["unet_small_64", "unet3d_small_32", "transunet_small_64", "unetr_small_3d_32", "unetr_small_2d_64",
         "setr_naive_small_64"]
PAPERS = ["transunet_r50_vit_b16_224", "unetr_b16_3d_96", "unetr_b16_2d_224"]


def _input(model, batch=2, side=None):
    c = model.cfg
    return torch.randn(batch, c.in_chans, *(side or c.img_size,) * c.spatial_dims)


@pytest.mark.parametrize("name", SMALL + PAPERS)
def test_contract(name):
    assert model_task(name) == "segmentation"
    with torch.device("meta"):
        model = vitlab.create_model(name)
    c = model.cfg
    assert c.spatial_dims in (2, 3) and isinstance(c.img_size, int)
    assert len(c.mean) == len(c.std) == c.in_chans and model.num_classes == c.num_classes


@pytest.mark.parametrize("name,expected", [("unet_small_64", (3, 7, 64, 2)), ("unet3d_small_32", (1, 4, 32, 3)),
                                           ("transunet_small_64", (3, 7, 64, 2)),
                                           ("unetr_small_3d_32", (1, 4, 32, 3)), ("unetr_small_2d_64", (3, 7, 64, 2)),
                                           ("setr_naive_small_64", (3, 7, 64, 2))])
def test_registered_settings(name, expected):
    with torch.device("meta"):
        c = vitlab.create_model(name).cfg
    assert (c.in_chans, c.num_classes, c.img_size, c.spatial_dims) == expected


# parameter counts: TransUNet's official R50-ViT-B/16 with 9 classes is 105.28M (Beckschen/TransUNet); UNETR's
# MONAI build is 92.80M, of which 18,432 are an unused LayerNorm per block (norm_cross_attn): 92.78M computing.
@pytest.mark.parametrize("name,params", [("transunet_r50_vit_b16_224", 105_277_081), ("unetr_b16_3d_96", 92_784_046)])
def test_paper_parameter_counts(name, params):
    with torch.device("meta"):
        model = vitlab.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == params


def test_unetr_parameters_equal_monai_minus_unused_norms():
    monai_nets = pytest.importorskip("monai.networks.nets")
    with torch.device("meta"):
        ref = monai_nets.UNETR(1, 14, 96)
        ours = vitlab.create_model("unetr_b16_3d_96")
    unused = sum(p.numel() for n, p in ref.named_parameters() if "norm_cross_attn" in n)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()) - unused


@pytest.mark.parametrize("name", SMALL)
def test_small_sizes(name):
    with torch.device("meta"):
        n = sum(p.numel() for p in vitlab.create_model(name).parameters())
    assert 1e6 <= n <= 8e6, n


def test_transunet_skip_shapes_official():
    """The official R50-ViT-B/16 at 224: features 512 @ 28, 256 @ 56, 64 @ 112; ViT map 768 @ 14."""
    model = vitlab.create_model("transunet_r50_vit_b16_224", depth=1).eval()     # depth 1: the shapes, cheaply
    with torch.no_grad():
        skips = model.forward_skips(torch.randn(1, 3, 224, 224))
    assert [tuple(s.shape) for s in skips] == [(1, 512, 28, 28), (1, 256, 56, 56), (1, 64, 112, 112),
                                               (1, 768, 14, 14)]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_unetr_skip_shapes_paper(spatial_dims):
    """UNETR (Fig. 2): stem 16 @ S, z3 -> 32 @ S/2, z6 -> 64 @ S/4, z9 -> 128 @ S/8, z12 -> 768 @ S/16."""
    name, s = ("unetr_b16_3d_96", 96) if spatial_dims == 3 else ("unetr_b16_2d_224", 224)
    model = vitlab.create_model(name, in_chans=1, dim=96, num_heads=2, mlp_dim=96).eval()   # narrow ViT, same taps
    assert model.taps == [3, 6, 9]
    x = torch.randn(1, 1, *(s,) * spatial_dims)
    with torch.no_grad():
        skips = model.forward_skips(x)
    want = [(16, s), (32, s // 2), (64, s // 4), (128, s // 8), (96, s // 16)]
    assert [tuple(m.shape) for m in skips] == [(1, c, *(side,) * spatial_dims) for c, side in want]


@pytest.mark.parametrize("name", SMALL)
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = vitlab.create_model(name).train()
    x = _input(model, side=32 if model.cfg.spatial_dims == 2 and name.startswith("unet_") else None)
    out = model(x)
    assert out.shape == (2, model.num_classes, *x.shape[2:])
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


@pytest.mark.parametrize("name", ["unet_small_64", "transunet_small_64", "unetr_small_2d_64", "setr_naive_small_64",
                                  "unetr_small_3d_32", "unet3d_small_32"])
def test_loss_falls_on_a_tiny_batch(name):
    torch.manual_seed(0)
    model = vitlab.create_model(name, img_size=32 if "3d" not in name else 16,
                                **({"patch_size": 4} if "unetr_small_3d" in name else {})).train()
    x = _input(model, batch=2)
    target = (x[:, 0] > 0).long()                                      # a mask the input shows
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", ["unetr_small_3d_32", "transunet_small_64", "setr_naive_small_64"])
def test_explain_records_attention(name):
    model = vitlab.create_model(name).eval()
    x = _input(model, batch=1)
    out, weights = record_attention(model, x)
    n = model.vit.patch_embed.num_patches
    assert len(weights) == model.cfg.depth
    assert all(w.shape == (1, model.cfg.num_heads, n, n) for w in weights)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(1, model.cfg.num_heads, n))
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)   # the explicit path computes the same


def test_init_encoder_from_vit_module_and_checkpoint(tmp_path):
    from vitlab.checkpoint import save_model

    vit = vitlab.create_model("vit_tiny_patch16_224", depth=8, num_classes=0)     # d 192, 3 heads
    model = vitlab.create_model("unetr_small_3d_32", qkv_bias=True)
    report = init_encoder_from(model.vit, vit)
    assert "vit.blocks.0.attn.qkv.weight" not in report["skipped"] and not report["skipped"]
    torch.testing.assert_close(model.vit.blocks[7].mlp.fc2.weight, vit.blocks[7].mlp.fc2.weight)
    assert model.vit.pos_embed.shape == (1, 64, 192)                    # 14x14 (+CLS) -> 4x4x4
    # the 2-D grid repeated along depth, then resized: constant along depth
    pe = model.vit.pos_embed.reshape(4, 4, 4, 192)
    torch.testing.assert_close(pe[0], pe[3])
    # the inflated kernel answers a depth-constant one-channel volume as the 2-D kernel its summed-RGB image
    w3, w2 = model.vit.patch_embed.proj.weight, vit.patch_embed.proj.weight
    assert w3.shape == (192, 1, 8, 8, 8)
    img = torch.randn(1, 1, 8, 8)
    vol = img.unsqueeze(2).expand(1, 1, 8, 8, 8)
    resized = F.interpolate(w2.sum(1, keepdim=True), size=(8, 8), mode="bicubic", align_corners=False) * 4
    torch.testing.assert_close((w3 * vol).sum((1, 2, 3, 4)), (resized * img).sum((1, 2, 3)), atol=1e-4, rtol=1e-4)
    # from a vitlab checkpoint directory: the same weights
    save_model(vit, tmp_path / "vit")
    other = vitlab.create_model("unetr_small_3d_32", qkv_bias=True)
    init_encoder_from(other.vit, tmp_path / "vit")
    torch.testing.assert_close(other.vit.state_dict()["blocks.3.attn.qkv.weight"], vit.blocks[3].attn.qkv.weight)
    torch.testing.assert_close(other.vit.pos_embed, model.vit.pos_embed)


def test_init_encoder_refuses_other_width():
    from vitlab.errors import VitlabError

    vit = vitlab.create_model("vit_micro_patch8_64")                    # d 64
    model = vitlab.create_model("setr_naive_small_64")                  # d 192
    with pytest.raises(VitlabError, match="another width or depth"):
        init_encoder_from(model.vit, vit)
