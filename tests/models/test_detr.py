"""DETR (vitlab.models.detr) and the layers it is built from: cross-attention and position-offset self-attention
(vitlab.layers.attention), the encoder/decoder layers (vitlab.layers.transformer).

References: torch.nn.MultiheadAttention and torch.nn.Transformer{Encoder,Decoder}Layer with our weights copied in
(their in_proj_weight is our qkv, or our q and kv stacked), and the paper's parameter count."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vitlab
from vitlab.layers.attention import CrossAttention, PositionalAttention, merge_masks
from vitlab.layers.transformer import TransformerDecoderLayer, TransformerEncoderLayer
from vitlab.models.detr import DETR, FrozenBatchNorm2d, ResNetBackbone, sine_position_2d

DIM, HEADS = 32, 4


def _mha_from(attn: nn.Module, dim: int = DIM, heads: int = HEADS) -> nn.MultiheadAttention:
    """torch's MultiheadAttention holding `attn`'s weights (in_proj rows: q, k, v)."""
    mha = nn.MultiheadAttention(dim, heads, batch_first=True)
    with torch.no_grad():
        if isinstance(attn, CrossAttention):
            mha.in_proj_weight.copy_(torch.cat([attn.q.weight, attn.kv.weight]))
            mha.in_proj_bias.copy_(torch.cat([attn.q.bias, attn.kv.bias]))
        else:
            mha.in_proj_weight.copy_(attn.qkv.weight)
            mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
    return mha.eval()


def _randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim == 1 else p.shape[-1] ** -0.5))
    return module.eval()


def _record(module: nn.Module, fn):
    """fn() with `module` on its explicit path; returns (output, the weights its probe saw)."""
    seen = []
    handle = module.weights.register_forward_hook(lambda _m, _i, out: seen.append(out))
    module.fused = False
    try:
        out = fn()
    finally:
        module.fused = True
        handle.remove()
    return out, seen


# --- attention ---------------------------------------------------------------------------------------------------
def test_cross_attention_equals_torch_multihead_attention_with_positions_and_padding():
    torch.manual_seed(0)
    attn = _randomize_(CrossAttention(DIM, HEADS))
    mha = _mha_from(attn)
    x, ctx = torch.randn(2, 5, DIM), torch.randn(2, 7, DIM)
    q_pos, k_pos = torch.randn(1, 5, DIM), torch.randn(1, 7, DIM)
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1, 4:] = False                                               # image 1: its last three keys are padding
    with torch.no_grad():
        ours = attn(x, ctx, key_padding_mask=keep, q_pos=q_pos, k_pos=k_pos)
        explicit, weights = _record(attn, lambda: attn(x, ctx, key_padding_mask=keep, q_pos=q_pos, k_pos=k_pos))
        ref, ref_weights = mha(x + q_pos, ctx + k_pos, ctx, key_padding_mask=~keep, average_attn_weights=False)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explicit, ours, atol=1e-5, rtol=1e-5)
    assert len(weights) == 1 and weights[0].shape == (2, HEADS, 5, 7)
    torch.testing.assert_close(weights[0], ref_weights, atol=1e-6, rtol=1e-5)
    assert weights[0][1, :, :, 4:].abs().max() == 0                    # no weight on padding


def test_cross_attention_takes_a_context_of_another_width():
    attn = CrossAttention(DIM, HEADS, context_dim=48).eval()
    out = attn(torch.randn(2, 3, DIM), torch.randn(2, 6, 48), k_pos=torch.randn(1, 6, 48))
    assert out.shape == (2, 3, DIM)


def test_positional_self_attention_equals_torch_with_position_on_queries_and_keys_only():
    attn = _randomize_(PositionalAttention(DIM, HEADS), seed=1)
    mha = _mha_from(attn)
    x, pos = torch.randn(3, 6, DIM), torch.randn(1, 6, DIM)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()                 # True = may attend (a text decoder's mask)
    with torch.no_grad():
        for mask in (None, causal):
            ours = attn(x, mask, pos=pos)
            explicit, weights = _record(attn, lambda m=mask: attn(x, m, pos=pos))
            ref = mha(x + pos, x + pos, x, attn_mask=None if mask is None else ~mask)[0]
            torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(explicit, ours, atol=1e-5, rtol=1e-5)
            assert weights[0].shape == (3, HEADS, 6, 6)


def test_merge_masks_combines_padding_with_bool_and_float_masks():
    keep = torch.tensor([[True, False, True]])
    assert torch.equal(merge_masks(None, keep), keep[:, None, None, :])
    causal = torch.ones(3, 3, dtype=torch.bool).tril()
    assert torch.equal(merge_masks(causal, keep)[0, 0], causal & keep)
    bias = torch.zeros(3, 3)
    merged = merge_masks(bias, keep)[0, 0]
    assert torch.isinf(merged[:, 1]).all() and (merged[:, [0, 2]] == 0).all()
    with pytest.raises(ValueError, match="must be bool"):
        merge_masks(None, keep.long())


# --- transformer layers ------------------------------------------------------------------------------------------
def _copy_encoder_layer(ours: TransformerEncoderLayer, ref: nn.TransformerEncoderLayer) -> None:
    with torch.no_grad():
        ref.self_attn.load_state_dict(_mha_from(ours.self_attn).state_dict())
        for a, b in [(ref.linear1, ours.mlp.fc1), (ref.linear2, ours.mlp.fc2), (ref.norm1, ours.norm1),
                     (ref.norm2, ours.norm2)]:
            a.load_state_dict(b.state_dict())


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_equals_torch_transformer_encoder_layer(norm_first):
    ours = _randomize_(TransformerEncoderLayer(DIM, HEADS, 64, norm_first=norm_first), seed=2)
    ref = nn.TransformerEncoderLayer(DIM, HEADS, 64, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    _copy_encoder_layer(ours, ref)
    x = torch.randn(2, 9, DIM)
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[0, 7:] = False
    with torch.no_grad():
        torch.testing.assert_close(ours(x, key_padding_mask=keep), ref(x, src_key_padding_mask=~keep),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_equals_torch_transformer_decoder_layer_with_a_causal_mask(norm_first):
    """What a translation or captioning decoder does with the same layer: causal self-attention, padded memory."""
    ours = _randomize_(TransformerDecoderLayer(DIM, HEADS, 64, norm_first=norm_first), seed=3)
    ref = nn.TransformerDecoderLayer(DIM, HEADS, 64, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    with torch.no_grad():
        ref.self_attn.load_state_dict(_mha_from(ours.self_attn).state_dict())
        ref.multihead_attn.load_state_dict(_mha_from(ours.cross_attn).state_dict())
        for a, b in [(ref.linear1, ours.mlp.fc1), (ref.linear2, ours.mlp.fc2), (ref.norm1, ours.norm1),
                     (ref.norm2, ours.norm2), (ref.norm3, ours.norm3)]:
            a.load_state_dict(b.state_dict())
    x, memory = torch.randn(2, 5, DIM), torch.randn(2, 8, DIM)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    keep = torch.ones(2, 8, dtype=torch.bool)
    keep[1, 6:] = False
    with torch.no_grad():
        got = ours(x, memory, self_attn_mask=causal, memory_key_padding_mask=keep)
        want = ref(x, memory, tgt_mask=~causal, memory_key_padding_mask=~keep)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# --- DETR --------------------------------------------------------------------------------------------------------
def tiny(**kw) -> DETR:
    args = dict(enc_layers=2, dec_layers=2, num_queries=5, dim=32, num_heads=4, ffn_dim=64, img_size=32)
    return vitlab.create_model("detr_micro_64", **{**args, **kw})


def test_variants_declare_detection_and_the_output_contract():
    for name in ("detr_resnet50", "detr_resnet18", "detr_micro_64", "detr_small_64", "detr_vit_micro_64"):
        assert vitlab.registry.model_task(name) == "detection"
    model = vitlab.create_model("detr_micro_64").eval()
    assert model.num_classes == 6 and model.cfg.img_size == 64 and model.cfg.num_queries == 20
    assert len(model.cfg.mean) == len(model.cfg.std) == 3
    assert model.feature_grid(64, 64) == (8, 8)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == {"logits", "boxes", "aux"}
    assert out["logits"].shape == (2, 20, 7) and out["boxes"].shape == (2, 20, 4)
    assert len(out["aux"]) == 2 and all(a["logits"].shape == (2, 20, 7) and a["boxes"].shape == (2, 20, 4)
                                        for a in out["aux"])
    assert 0 < out["boxes"].min() and out["boxes"].max() < 1
    no_aux = tiny(aux_loss=False).eval()
    assert no_aux(torch.randn(1, 3, 32, 32))["aux"] == []


@pytest.mark.parametrize("name,size,grid", [("detr_resnet18", 100, (4, 4)), ("detr_resnet18", 75, (3, 3)),
                                            ("detr_vit_micro_64", 64, (8, 8))])
def test_feature_grid_is_the_encoder_token_grid(name, size, grid):
    with torch.device("meta"):
        model = vitlab.create_model(name, img_size=size)
    assert model.feature_grid(size, size) == grid
    assert tuple(model.backbone(torch.empty(1, 3, size, size, device="meta")).shape[-2:]) == grid


def test_fused_and_explicit_attention_give_the_same_detections():
    model = tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    modules = [m for m in model.modules() if isinstance(m, vitlab.layers.Attention)]
    assert len(modules) == 2 + 2 * 2                                    # encoder self, decoder self + cross
    seen = []
    handles = [m.weights.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape))) for m in modules]
    with torch.no_grad():
        fused = model(x)
        assert seen == []                                               # the fused path shows no weights
        for m in modules:
            m.fused = False
        explicit = model(x)
    for h in handles:
        h.remove()
    for key in ("logits", "boxes"):
        torch.testing.assert_close(explicit[key], fused[key], atol=1e-5, rtol=1e-5)
    grid = 4 * 4
    assert seen[:2] == [(2, 4, grid, grid)] * 2                         # encoder self-attention
    assert seen[2:4] == [(2, 4, 5, 5), (2, 4, 5, grid)]                 # decoder: queries, then the image


def test_every_parameter_gets_a_gradient():
    """All but the first decoder self-attention's: DETR starts the decoder from an all-zero target, so that layer
    attends over identical values (W_v 0 + b_v): its output, W_o b_v + b_o, does not depend on W_q, W_k, W_v;
    at the initialisation (zero attention biases) it is 0, and W_o and norm1's scale get no gradient either."""
    torch.manual_seed(0)
    model = tiny(dropout=0.0).train()
    out = model(torch.randn(2, 3, 32, 32))
    loss = sum((o * torch.randn_like(o)).sum() for layer in [out] + out["aux"] for o in (layer["logits"],
                                                                                          layer["boxes"]))
    loss.backward()
    missing = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()}
    assert missing == {"decoder.layers.0.self_attn.qkv.weight", "decoder.layers.0.self_attn.proj.weight",
                       "decoder.layers.0.norm1.weight"}


def test_published_parameter_count_of_detr_resnet50():
    """The paper's 41M (Table 1); detr's training prints 41,302,368: the trainable parameters with the backbone's
    batch norm frozen and its stem + layer1 not trained. All parameters counted: within 1% of 41.3M."""
    with torch.device("meta"):
        model = vitlab.create_model("detr_resnet50")
        trained_as_detr = vitlab.create_model("detr_resnet50", frozen_stages=1)
    assert model.head.out_features == 92
    total = sum(p.numel() for p in model.parameters())
    assert total == pytest.approx(41.3e6, rel=0.01)
    assert sum(p.numel() for p in trained_as_detr.parameters() if p.requires_grad) == 41_302_368


def test_frozen_batch_norm_equals_eval_batch_norm_and_has_no_parameters():
    bn = nn.BatchNorm2d(8).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2), bn.bias.normal_(), bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
    frozen = FrozenBatchNorm2d(8)
    frozen.load_state_dict({k: v for k, v in bn.state_dict().items() if k != "num_batches_tracked"})
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(frozen(x), bn(x))
    assert list(frozen.parameters()) == []
    model = tiny(backbone_norm="frozen")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("norm", ["frozen", "batch"])
def test_folded_backbone_inference_equals_the_plain_forward(norm):
    """Inference folds each batch norm into its convolution (NHWC, fused ReLU and residual add)."""
    model = tiny(backbone_norm=norm, backbone_args=dict(block="bottleneck", layers=(1, 2), widths=(8, 16),
                                                        stem="imagenet", stem_width=8)).eval()
    backbone = model.backbone
    assert isinstance(backbone, ResNetBackbone)
    with torch.no_grad():
        for name, buf in backbone.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
            elif name.endswith(("running_mean", "bias", "weight")):
                buf.normal_(0, 0.3)
        x = torch.randn(2, 3, 40, 40)
        folded = backbone(x)
        plain = backbone.forward_features(x)
        torch.testing.assert_close(folded, plain, atol=1e-5, rtol=1e-5)
        conv = backbone.layer1[0].conv1
        conv.weight.mul_(2)                                             # the cache follows in-place updates
        torch.testing.assert_close(backbone(x), backbone.forward_features(x), atol=1e-5, rtol=1e-5)


def test_sine_positions_follow_detr():
    """The first channels encode y: sin(y_norm / 1) and cos(y_norm / 1), y_norm = 2 pi row / rows (1-based)."""
    pos = sine_position_2d(2, 3, 8)                                     # (1, 6, 8), row-major over the grid
    assert pos.shape == (1, 6, 8)
    y = torch.tensor([1.0, 1, 1, 2, 2, 2]) / (2 + 1e-6) * 2 * torch.pi
    x = torch.tensor([1.0, 2, 3, 1, 2, 3]) / (3 + 1e-6) * 2 * torch.pi
    torch.testing.assert_close(pos[0, :, 0], y.sin())
    torch.testing.assert_close(pos[0, :, 1], y.cos())
    torch.testing.assert_close(pos[0, :, 2], (y / 10000 ** 0.5).sin())
    torch.testing.assert_close(pos[0, :, 4], x.sin())
    full = torch.ones(1, 2, 3, dtype=torch.bool)
    torch.testing.assert_close(sine_position_2d(2, 3, 8, full), pos)


def test_pixel_mask_all_real_is_no_mask_and_padding_changes_the_result():
    """HF's pixel_mask (True = real pixel): all real equals no mask; padding masks keys and recounts positions."""
    model = tiny().eval()
    x = torch.randn(1, 3, 32, 32)
    mask = torch.ones(1, 32, 32, dtype=torch.bool)
    with torch.no_grad():
        plain = model(x)["logits"]
        torch.testing.assert_close(model(x, mask)["logits"], plain, atol=1e-5, rtol=1e-5)
        mask[:, :, 16:] = False
        changed = model(x, mask)["logits"]
    assert not torch.allclose(changed, plain, atol=1e-3)


def test_bad_settings_raise_one_line_errors():
    with pytest.raises(vitlab.errors.VitlabError, match="divisible by num_heads"):
        tiny(dim=30, num_heads=4)
    with pytest.raises(vitlab.errors.VitlabError, match="backbone must be"):
        tiny(backbone="swin")
    with pytest.raises(vitlab.errors.VitlabError, match="backbone_norm"):
        tiny(backbone_norm="group")


def test_a_tiny_detr_fits_two_images_with_fixed_assignments():
    """L1 + cross-entropy with query i assigned to object i (no matcher): the model learns the classes and boxes."""
    torch.manual_seed(0)
    model = tiny(dropout=0.0, num_classes=3, num_queries=4, enc_layers=1, dec_layers=1, aux_loss=False)
    x = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([[1, 2, 3, 3], [0, 3, 3, 3]])                  # 3 = no object
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]], [[0.5, 0.5, 0.6, 0.5], [0, 0, 0, 0]]])
    real = labels != 3
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        out = model(x)
        loss = F.cross_entropy(out["logits"].flatten(0, 1), labels.flatten()) \
            + 5 * (out["boxes"][:, :2][real[:, :2]] - boxes[real[:, :2]]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert torch.equal(out["logits"].argmax(-1), labels)
    assert (out["boxes"][:, :2][real[:, :2]] - boxes[real[:, :2]]).abs().max() < 0.05


def test_folded_backbone_follows_batch_norm_statistics_updated_in_training():
    """The inference path folds batch norm into the convolutions and caches the result; training steps update the
    running statistics in place (without bumping their version counters), and evaluation after them must see the
    new statistics: equal to the unfolded backbone (this went stale in an in-training evaluation once)."""
    torch.manual_seed(0)
    model = vitlab.create_model("detr_micro_64", backbone_norm="batch")
    x = torch.randn(4, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        model(x)                                            # fills the folded-weight cache
    model.train()
    for _ in range(3):                                      # running statistics move
        model(torch.randn(4, 3, 64, 64) * 3 + 1)
    model.eval()
    with torch.no_grad():
        folded = model.backbone(x)
        plain = model.backbone.forward_features(x)
    torch.testing.assert_close(folded, plain, atol=1e-4, rtol=1e-4)
