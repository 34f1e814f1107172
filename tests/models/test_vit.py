import pytest
import torch

import vitlab
from vitlab.checkpoint import load_model, save_model
from vitlab.errors import VitlabError


def meta_params(name, **kw):
    with torch.device("meta"):
        model = vitlab.create_model(name, **kw)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,expected", [
    ("vit_base_patch16_224", 86.6e6),      # lecture table: ViT-B/16 86M
    ("vit_large_patch16_224", 304.3e6),    # timm 304.3M (lecture: 307M)
    ("vit_huge_patch14_224", 632.0e6),     # lecture: 632M (timm 630.8M without the 1000-class head)
    ("vit_tiny_patch16_224", 5.7e6),
    ("vit_small_patch16_224", 22.0e6),
])
def test_parameter_counts_match_the_lecture_table(name, expected):
    assert abs(meta_params(name) - expected) / expected < 0.01


def test_parameter_count_by_formula():
    # D = 64, L = 6, patch 2, 8 px, 10 classes: embed + tokens + L blocks + norm + head
    D, L, P, N, C = 64, 6, 2, 16, 10
    block = 4 * D + (3 * D * D + 3 * D) + (D * D + D) + (D * 4 * D + 4 * D) + (4 * D * D + D)
    expected = (3 * P * P * D + D) + D + (N + 1) * D + L * block + 2 * D + (D * C + C)
    assert meta_params("vit_micro_patch2_8", num_classes=C) == expected


def test_forward_shapes_and_contracts():
    torch.manual_seed(0)
    model = vitlab.create_model("vit_micro_patch4_32", num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 1 + 64, 64)
    assert model.forward_head(tokens, pre_logits=True).shape == (2, 64)
    torch.testing.assert_close(model(x), model.forward_head(tokens))
    torch.testing.assert_close(model.forward_head(tokens), model.head(tokens[:, 0]))


def test_pre_ln_block_equations():
    """z' = MSA(LN(z)) + z ; z = MLP(LN(z')) + z' (ViT eqs. 2-3), checked on one block."""
    torch.manual_seed(0)
    blk = vitlab.create_model("vit_micro_patch2_8").blocks[0].eval()
    z = torch.randn(2, 17, 64)
    z1 = blk.attn(blk.norm1(z)) + z
    torch.testing.assert_close(blk(z), blk.mlp(blk.norm2(z1)) + z1)


def test_avg_pool_and_sincos_variants():
    torch.manual_seed(0)
    m = vitlab.create_model("vit_micro_patch2_8", pool="avg", class_token=False, pos_embed="sincos").eval()
    assert m.num_prefix_tokens == 0 and not any("pos_embed" in n for n, _ in m.named_parameters())
    x = torch.randn(2, 3, 8, 8)
    tokens = m.forward_features(x)
    torch.testing.assert_close(m(x), m.head(tokens.mean(1)))


def test_dropout_and_drop_path_change_training_outputs_only():
    torch.manual_seed(0)
    m = vitlab.create_model("vit_micro_patch2_8", drop_rate=0.1, drop_path_rate=0.2)
    x = torch.randn(4, 3, 8, 8)
    m.train()
    assert not torch.allclose(m(x), m(x))
    m.eval()
    torch.testing.assert_close(m(x), m(x))


def test_every_parameter_gets_a_gradient():
    m = vitlab.create_model("vit_micro_patch2_8", num_classes=3)
    m(torch.randn(2, 3, 8, 8)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_checkpoint_at_other_size_resamples_position_embeddings(tmp_path):
    torch.manual_seed(0)
    small = vitlab.create_model("vit_micro_patch4_32", num_classes=5)
    save_model(small, tmp_path / "ck", classes=list("abcde"))
    big = load_model(tmp_path / "ck", img_size=48)
    assert big.pos_embed.shape == (1, 1 + 144, 64)
    torch.testing.assert_close(big.pos_embed[:, :1], small.pos_embed[:, :1])
    torch.testing.assert_close(big.blocks[0].attn.qkv.weight, small.blocks[0].attn.qkv.weight)
    assert big(torch.randn(1, 3, 48, 48)).shape == (1, 5)
    assert big.vitlab_meta["classes"] == list("abcde")


def test_checkpoint_roundtrip_and_fresh_head(tmp_path, caplog):
    torch.manual_seed(0)
    m = vitlab.create_model("vit_micro_patch2_8", num_classes=10).eval()
    save_model(m, tmp_path / "ck")
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(vitlab.create_model("vit_micro_patch2_8", checkpoint_path=tmp_path / "ck")(x), m(x))
    with caplog.at_level("WARNING"):
        ft = vitlab.create_model("vit_micro_patch2_8", checkpoint_path=tmp_path / "ck", num_classes=3)
    assert ft.head.out_features == 3 and "head" in caplog.text
    torch.testing.assert_close(ft.blocks[2].mlp.fc1.weight, m.blocks[2].mlp.fc1.weight)


def test_mismatched_checkpoint_is_refused_with_grouped_keys(tmp_path):
    save_model(vitlab.create_model("vit_micro_patch2_8"), tmp_path / "ck")
    with pytest.raises(VitlabError) as err:
        vitlab.create_model("vit_tiny_patch2_8", checkpoint_path=tmp_path / "ck")
    msg = str(err.value)
    assert "shape mismatch" in msg and "blocks.{0..5}" in msg and "\n" not in msg


def test_unknown_model_and_bad_sizes():
    with pytest.raises(VitlabError, match="unknown model 'vit_tinyy_patch16_224'; did you mean vit_tiny_patch16_224"):
        vitlab.create_model("vit_tinyy_patch16_224")
    with pytest.raises(VitlabError, match="not divisible by the patch size"):
        vitlab.create_model("vit_tiny_patch16_224", img_size=100)
    m = vitlab.create_model("vit_micro_patch2_8")
    with pytest.raises(VitlabError, match="input is 16x16 but the model was built for 8x8"):
        m(torch.randn(1, 3, 16, 16))


def test_list_models_pattern():
    names = vitlab.list_models("vit_*_patch16_224")
    assert {"vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
            "vit_large_patch16_224"} <= set(names)
    assert names == sorted(names)
    assert "vit_huge_patch14_224" in vitlab.list_models("vit_huge*")


def test_non_square_checkpoint_resamples_to_new_size(tmp_path):
    torch.manual_seed(0)
    src = vitlab.create_model("vit_micro_patch4_32", img_size=(16, 32), num_classes=2)
    save_model(src, tmp_path / "ck")
    big = load_model(tmp_path / "ck", img_size=(32, 32))
    assert big.pos_embed.shape == (1, 1 + 64, 64)
    from vitlab.layers import resample_pos_embed
    torch.testing.assert_close(big.pos_embed, resample_pos_embed(src.pos_embed, (8, 8), (4, 8)))


def test_weight_init_jax_scales_with_width_and_zeroes_the_heads():
    """weight_init="jax": xavier-uniform linears (bound sqrt(6 / (fan_in + fan_out))), tiny MLP biases, zero heads
    (DeiT's distillation head too); the default keeps timm's truncated normal 0.02."""
    import math

    jax = vitlab.create_model("vit_micro_patch4_32", num_classes=6, weight_init="jax")
    qkv = jax.blocks[0].attn.qkv.weight.detach()                          # (3 * 64, 64)
    bound = math.sqrt(6 / (qkv.shape[0] + qkv.shape[1]))
    assert qkv.abs().max() <= bound and qkv.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert jax.head.weight.abs().sum() == 0 and jax.head.bias.abs().sum() == 0
    fc1_bias = jax.blocks[0].mlp.fc1.bias
    assert 0 < fc1_bias.abs().max() < 1e-5 and jax.blocks[0].attn.qkv.bias.abs().sum() == 0
    default = vitlab.create_model("vit_micro_patch4_32", num_classes=6)
    assert default.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert default.head.weight.abs().sum() > 0
    deit = vitlab.create_model("deit_tiny_distilled_patch16_224", num_classes=5, weight_init="jax")
    assert deit.head_dist.weight.abs().sum() == 0
    with pytest.raises(VitlabError, match="weight_init must be"):
        vitlab.create_model("vit_micro_patch4_32", weight_init="xavier")
