"""2-D/3-D layers: the 2-D forms equal the library's 2-D ones; the 3-D patch grid is row-major (d, h, w)."""
from __future__ import annotations

import pytest
import torch

from vitlab.errors import VitlabError
from vitlab.layers import PatchEmbed, resample_pos_embed
from vitlab.layers.nd import PatchEmbedNd, resample_pos_embed_nd, tokens_to_map


def test_patch_embed_2d_equals_patch_embed():
    ours, ref = PatchEmbedNd(32, 8, 3, 16, spatial_dims=2), PatchEmbed(32, 8, 3, 16)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), ref(x))


def test_patch_embed_3d_order_and_map_round_trip():
    pe = PatchEmbedNd(16, 8, 1, 4, spatial_dims=3)
    x = torch.randn(1, 1, 16, 16, 16)
    tokens = pe(x)                                                     # (1, 8, 4)
    assert tokens.shape == (1, 8, 4) and pe.grid_size == (2, 2, 2)
    conv = pe.proj(x)                                                  # (1, 4, 2, 2, 2)
    torch.testing.assert_close(tokens[0, 1], conv[0, :, 0, 0, 1])      # token 1 = (d 0, h 0, w 1)
    torch.testing.assert_close(tokens_to_map(tokens, pe.grid_size), conv)
    with pytest.raises(VitlabError, match="input is 8x16x16 but the model was built for 16x16x16"):
        pe(torch.randn(1, 1, 8, 16, 16))


def test_resample_2d_equals_library_and_2d_to_3d_is_depth_constant():
    pos = torch.randn(1, 1 + 16, 8)
    torch.testing.assert_close(resample_pos_embed_nd(pos, (6, 6), num_prefix_tokens=1),
                               resample_pos_embed(pos, (6, 6), num_prefix_tokens=1))
    vol = resample_pos_embed_nd(pos[:, 1:], (3, 4, 4))                 # same plane size: the grid itself per slice
    assert vol.shape == (1, 48, 8)
    for d in range(3):
        torch.testing.assert_close(vol.reshape(3, 16, 8)[d], pos[0, 1:])
