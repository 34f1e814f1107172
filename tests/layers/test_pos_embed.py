import pytest
import torch
import torch.nn.functional as F

from vitlab.layers import PatchEmbed, resample_pos_embed, sincos_2d
from vitlab.layers.drop import DropPath, drop_path_rates
from vitlab.errors import VitlabError


def test_resample_identity_at_equal_size():
    pe = torch.randn(1, 1 + 16, 8)
    assert resample_pos_embed(pe, (4, 4)) is pe


def test_resample_keeps_prefix_tokens_and_interpolates_grid():
    torch.manual_seed(0)
    pe = torch.randn(1, 2 + 9, 8)
    out = resample_pos_embed(pe, (6, 6), num_prefix_tokens=2)
    assert out.shape == (1, 2 + 36, 8)
    torch.testing.assert_close(out[:, :2], pe[:, :2])
    grid = pe[:, 2:].reshape(1, 3, 3, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[:, 2:], expected.permute(0, 2, 3, 1).reshape(1, 36, 8))


def test_resample_rectangular_grid():
    # a constant embedding stays constant under any interpolation, on any grid shape
    pe = torch.cat([torch.zeros(1, 1, 4), torch.ones(1, 2 * 3, 4) * 0.5], dim=1)
    out = resample_pos_embed(pe, (4, 5), old_grid=(2, 3))
    assert out.shape == (1, 1 + 20, 4)
    torch.testing.assert_close(out[:, 1:], torch.full((1, 20, 4), 0.5))
    # the row-major layout is kept: a ramp along the width stays a ramp along the width
    ramp = torch.arange(3.0).repeat(2).view(1, 6, 1).expand(1, 6, 2)
    out = resample_pos_embed(torch.cat([torch.zeros(1, 1, 2), ramp], 1), (2, 3), old_grid=(2, 3))
    assert out[0, 1:4, 0].tolist() == [0.0, 1.0, 2.0]
    up = resample_pos_embed(torch.cat([torch.zeros(1, 1, 2), ramp], 1), (2, 6), old_grid=(2, 3), mode="bilinear")
    row = up[0, 1:7, 0]
    assert torch.all(row[1:] >= row[:-1]) and torch.allclose(up[0, 1:7, 0], up[0, 7:13, 0])


def test_resample_refuses_wrong_old_grid():
    with pytest.raises(ValueError):
        resample_pos_embed(torch.randn(1, 1 + 10, 4), (4, 4))


def test_sincos_2d_values():
    pe = sincos_2d((2, 3), 8)                      # 6 positions, 2 frequencies per quarter
    assert pe.shape == (6, 8)
    # position (row 1, col 2) -> index 5; quarter layout sin(y), cos(y), sin(x), cos(x); omega = [1, 1/100]
    y, x = 1.0, 2.0
    expected = torch.tensor([torch.sin(torch.tensor(y)), torch.sin(torch.tensor(y / 100)),
                             torch.cos(torch.tensor(y)), torch.cos(torch.tensor(y / 100)),
                             torch.sin(torch.tensor(x)), torch.sin(torch.tensor(x / 100)),
                             torch.cos(torch.tensor(x)), torch.cos(torch.tensor(x / 100))])
    torch.testing.assert_close(pe[5], expected)


def test_patch_embed_is_linear_map_of_flattened_patches():
    torch.manual_seed(0)
    pe = PatchEmbed(8, 4, 3, 5)
    x = torch.randn(2, 3, 8, 8)
    tokens = pe(x)                                                # (2, 4, 5)
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4)                   # (2, 3, 2, 2, 4, 4)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(2, 4, 48)  # row-major patches, (c, y, x) inside
    expected = patches @ pe.proj.weight.reshape(5, 48).T + pe.proj.bias
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)


def test_patch_embed_refuses_indivisible_size():
    with pytest.raises(VitlabError, match="not divisible by the patch size"):
        PatchEmbed(30, 16)


def test_drop_path():
    x = torch.ones(1000, 3)
    dp = DropPath(0.25).train()
    y = dp(x)
    kept = (y[:, 0] != 0).float().mean().item()
    assert 0.68 < kept < 0.82
    assert torch.all((y == 0) | (y == 1 / 0.75))
    assert torch.equal(dp.eval()(x), x)
    assert drop_path_rates(0.1, 3) == [0.0, 0.05, 0.1]
