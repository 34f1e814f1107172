"""Swin: windows and shifts (exact zeros across windows, the shift round-trips), HF transformers parity, timm /
original layouts, window resizing, published sizes, CPU training."""
from __future__ import annotations

import json
import math

import pytest
import torch

import vitlab
from vitlab.bench.flops import model_summary
from vitlab.checkpoint import load_model, load_weights
from vitlab.errors import VitlabError
from vitlab.models.swin import WindowAttention, window_partition, window_reverse

MICRO = {"img_size": 32, "patch_size": 2, "embed_dim": 16, "depths": (2, 2, 2), "num_heads": (2, 2, 4),
         "window_size": 4}


def effective_groups(H: int, W: int, M: int, s: int) -> torch.Tensor:
    """(H*W,) window id of every token in ORIGINAL coordinates, from the paper's figure 2: windows start at offset
    s (tokens before it form their own partial windows); computed without rolling anything."""
    gy = torch.div(torch.arange(H) - s, M, rounding_mode="floor")               # -1 for the top strip when s > 0
    gx = torch.div(torch.arange(W) - s, M, rounding_mode="floor")
    return (gy[:, None] * (W + 1) + gx[None, :]).flatten()


def _record_window_weights(attn: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    attn.fused = False
    seen = []
    handle = attn.weights.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        attn(x)
    handle.remove()
    return seen[0]                                                             # (B*nW, h, M*M, M*M)


@pytest.mark.parametrize("shift", [0, 2])
def test_attention_weights_are_exactly_zero_across_shifted_windows(shift):
    H, W, M = 8, 8, 4
    torch.manual_seed(0)
    attn = WindowAttention(16, 2, (H, W), M, shift).eval()
    weights = _record_window_weights(attn, torch.randn(1, H * W, 16))
    # Scatter the per-window weights to a dense (N, N) map by tracking token ids through shift + partition.
    ids = torch.arange(H * W, dtype=torch.float32).view(1, H, W, 1)
    ids = window_partition(torch.roll(ids, (-shift, -shift), (1, 2)), M).squeeze(-1).long()   # (nW, M*M)
    dense = torch.zeros(2, H * W, H * W)
    for w in range(ids.shape[0]):
        dense[:, ids[w][:, None], ids[w][None, :]] = weights[w]
    groups = effective_groups(H, W, M, shift)
    same = groups[:, None] == groups[None, :]
    assert torch.all(dense[:, ~same] == 0.0)                                   # exactly zero, not just small
    assert torch.all(dense[:, same] > 0.0)
    assert len(groups.unique()) == (9 if shift else 4)                          # 3x3 windows after the shift


def test_cyclic_shift_and_window_partition_round_trip():
    x = torch.randn(2, 8, 12, 5)
    torch.testing.assert_close(window_reverse(window_partition(x, 4), 4, 8, 12), x, rtol=0, atol=0)
    rolled = torch.roll(x, (-2, -2), (1, 2))
    back = torch.roll(window_reverse(window_partition(rolled, 4), 4, 8, 12), (2, 2), (1, 2))
    torch.testing.assert_close(back, x, rtol=0, atol=0)


def test_shifted_window_attention_averages_each_effective_window():
    """With q = k = 0, no bias, v = x and an identity output projection, each token's output is the mean of its
    effective window in the original coordinates: the shift, the mask and the un-shift together are right."""
    H, W, M, s, C = 8, 8, 4, 2, 6
    attn = WindowAttention(C, 1, (H, W), M, s).eval()
    with torch.no_grad():
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        attn.qkv.weight[2 * C:].copy_(torch.eye(C))
        attn.proj.weight.copy_(torch.eye(C))
        attn.proj.bias.zero_()
        attn.relative_position_bias_table.zero_()
        x = torch.randn(1, H * W, C)
        out = attn(x)
    groups = effective_groups(H, W, M, s)
    expected = torch.stack([x[0, groups == g].mean(0) for g in groups])
    torch.testing.assert_close(out[0], expected, rtol=1e-5, atol=1e-6)


def test_window_larger_than_grid_is_clamped_and_unshifted():
    attn = WindowAttention(8, 2, (4, 4), window_size=7, shift_size=3)
    assert (attn.window_size, attn.shift_size) == (4, 0)
    assert attn.relative_position_bias_table.shape == (49, 2)


def test_grid_not_divisible_by_window_is_a_clear_error():
    with pytest.raises(VitlabError, match="Swin stage grid 16x16 is not divisible by the window size 5"):
        vitlab.create_model("swin_micro_patch2_window4_32", window_size=5)


# --- HF transformers parity ------------------------------------------------------------------------------------------
def _randomize(model: torch.nn.Module) -> None:
    """Random weights on a scale where every part (bias tables, norms, head) moves the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 1.0)
            elif p.ndim >= 2:
                p.normal_(0, 1 / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.1)


HF_CONFIGS = [
    {"image_size": 32, "patch_size": 2, "embed_dim": 16, "depths": [2, 2, 2], "num_heads": [2, 2, 4],
     "window_size": 4, "num_labels": 7},
    {"image_size": 56, "patch_size": 4, "embed_dim": 24, "depths": [2, 2], "num_heads": [2, 4],
     "window_size": 7, "num_labels": 5},
]


@pytest.mark.parametrize("hf_cfg", HF_CONFIGS, ids=["w4-3stages", "w7-clamped"])
def test_hf_swin_directory_loads_with_equal_logits(tmp_path, hf_cfg):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.SwinForImageClassification(transformers.SwinConfig(**hf_cfg)).eval()
    _randomize(hf)
    hf.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    x = torch.randn(3, 3, hf_cfg["image_size"], hf_cfg["image_size"])
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
        got = model(x)
    assert expected.std(0).mean() > 0.1                      # the logits really depend on the input
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_swin_exports_to_hf_and_back(tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    from vitlab.convert.hf_swin import swin_to_hf

    torch.manual_seed(0)
    model = vitlab.create_model("swin_micro_patch2_window4_32", num_classes=4, **MICRO).eval()
    _randomize(model)
    config, weights, preprocessor = swin_to_hf(model)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "model.safetensors"))
    hf = transformers.SwinForImageClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).logits, model(x), rtol=0, atol=1e-4)
        torch.testing.assert_close(load_model(tmp_path)(x), model(x), rtol=0, atol=0)


# --- timm / original layouts -----------------------------------------------------------------------------------------
def _original_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our weights in the original repository's layout, buffers included (as its checkpoints store them)."""
    from vitlab.convert._keymap import rename
    from vitlab.convert.hf_swin import shift_merging
    from vitlab.convert.timm_swin import ORIGINAL_SWIN_KEYS

    sd, unknown = rename(shift_merging(model.state_dict(), -1), ORIGINAL_SWIN_KEYS, reverse=True)
    assert not unknown
    for name, m in model.named_modules():
        if isinstance(m, WindowAttention):
            sd[f"{name}.relative_position_index"] = m.relative_position_index
            if m.shift_mask is not None:
                sd[name.replace(".attn", ".attn_mask")] = m.shift_mask
    return sd


def test_original_layout_moves_patch_merging_to_the_next_stage(tmp_path):
    torch.manual_seed(0)
    model = vitlab.create_model("swin_micro_patch2_window4_32", num_classes=3, **MICRO).eval()
    sd = _original_state_dict(model)
    assert "layers.0.downsample.reduction.weight" in sd and "layers.2.downsample.reduction.weight" not in sd
    torch.save({"model": sd}, tmp_path / "swin_original.pth")
    loaded = load_model(tmp_path / "swin_original.pth")       # size inferred from the stored attention masks
    assert loaded.cfg.img_size == 32 and list(loaded.cfg.depths) == [2, 2, 2]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_timm_swin_matches_timm_logits(tmp_path):
    timm = pytest.importorskip("timm", reason="timm does not import here; runs where it does")
    torch.manual_seed(0)
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=10, img_size=56,
                            embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=7).eval()
    _randomize(ref)
    torch.save(ref.state_dict(), tmp_path / "swin_timm.pth")
    ours = vitlab.create_model("swin_tiny_patch4_window7_224", checkpoint_path=tmp_path / "swin_timm.pth",
                               img_size=56)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-4)


def test_relative_position_tables_are_resized_when_the_window_changes():
    small = vitlab.create_model("swin_micro_patch2_window4_32", num_classes=3, **MICRO)
    with torch.no_grad():
        for name, p in small.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.fill_(0.25)
    large = vitlab.create_model("swin_micro_patch2_window4_32", num_classes=3, **{**MICRO, "window_size": 8})
    assert large.layers[0].blocks[0].attn.relative_position_bias_table.shape == (225, 2)
    load_weights(large, small.state_dict())
    table = large.layers[0].blocks[0].attn.relative_position_bias_table
    torch.testing.assert_close(table, torch.full_like(table, 0.25))          # a constant map stays constant
    same = small.adapt_state_dict(small.state_dict())                         # same window: untouched
    assert all(torch.equal(same[k], v) for k, v in small.state_dict().items())


# --- sizes and training ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, params_m, gflops", [("swin_tiny_patch4_window7_224", 28.3, 4.5),
                                                     ("swin_base_patch4_window7_224", 87.8, 15.4)])
def test_params_and_gflops_match_the_paper(name, params_m, gflops):
    s = model_summary(name)
    assert abs(s["params"] / 1e6 - params_m) / params_m < 0.02
    assert abs(s["gflops"] - gflops) / gflops < 0.02


def test_micro_swin_trains_on_cpu_and_every_parameter_learns():
    torch.manual_seed(0)
    model = vitlab.create_model("swin_micro_patch2_window4_32", num_classes=4, **MICRO)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(8):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()] == []
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert "layers.0.blocks.0.attn.relative_position_bias_table" in model.no_weight_decay()
