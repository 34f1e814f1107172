"""vitlab explain on Swin: the recorded window attention equals softmax(QK^T/sqrt(d) + B + shift mask) by hand, the
shift mask zeroes cross-region weights, the report / CLI write the window figures, and a ViT report is unchanged."""
import json
import math
import re

import pytest
import torch
from PIL import Image

import vitlab
from vitlab.checkpoint import save_model
from vitlab.cli import main
from vitlab.explain import explain
from vitlab.explain.swin import record_window_attention, shift_regions, window_map, window_of, window_positions

SIZE = 16                                  # 2x2 patches -> 8x8 tokens, 4x4 windows (4 of them), then a 4x4 stage


def tiny_swin():
    torch.manual_seed(0)
    model = vitlab.create_model("swin_micro_patch2_window4_32", num_classes=3, img_size=SIZE, embed_dim=16,
                                depths=(2, 2), num_heads=(2, 2)).eval()
    with torch.no_grad():                  # larger q/k weights than the init: attention far from uniform
        for m in model.modules():
            if hasattr(m, "relative_position_bias_table"):
                m.qkv.weight.normal_(0.0, 0.5)
                m.relative_position_bias_table.normal_(0.0, 1.0)
    return model


@pytest.fixture(scope="module")
def swin():
    return tiny_swin()


def test_recorded_weights_equal_a_hand_computation(swin):
    block = swin.layers[0].blocks[1].attn                           # the shifted block of stage 1
    seen = {}
    handle = block.register_forward_pre_hook(lambda _m, args: seen.update(x=args[0]))
    x = torch.randn(2, 3, SIZE, SIZE)
    _, records = record_window_attention(swin, x)
    handle.remove()
    rec = records[1]
    assert (rec.stage, rec.block, rec.grid, rec.window, rec.shift) == (1, 2, (8, 8), 4, 2)
    assert rec.weights.shape == (2, 4, 2, 16, 16)                    # (B, windows, heads, M*M, M*M)
    torch.testing.assert_close(rec.weights.sum(-1), torch.ones(2, 4, 2, 16))

    w = 3                                                            # bottom-right window: four regions
    tokens = seen["x"].view(2, 8, 8, 16).roll((-2, -2), dims=(1, 2))[:, 4:8, 4:8].reshape(2, 16, 16)
    with torch.no_grad():
        q, k, _ = block.qkv(tokens).view(2, 16, 3, 2, 8).permute(2, 0, 3, 1, 4)   # each (B, heads, 16, d=8)
        index = torch.tensor([[(yi - yj + 3) * 7 + (xi - xj + 3) for yj in range(4) for xj in range(4)]
                              for yi in range(4) for xi in range(4)])          # relative offsets, row-major
        bias = block.relative_position_bias_table[index].permute(2, 0, 1)     # (heads, 16, 16)
        region = torch.tensor([[0, 0, 1, 1]] * 2 + [[2, 2, 3, 3]] * 2).flatten()   # rows 6,7 | 0,1 x same cols
        mask = torch.where(region[:, None] == region[None, :], 0.0, float("-inf"))
        expected = (q @ k.transpose(-2, -1) / math.sqrt(8) + bias + mask).softmax(-1)
    torch.testing.assert_close(rec.weights[:, w], expected, rtol=1e-4, atol=1e-6)
    assert float(expected.amax()) > 3 / 16                           # informative: far from uniform


def test_the_shift_mask_zeroes_cross_region_attention(swin):
    _, records = record_window_attention(swin, torch.randn(1, 3, SIZE, SIZE))
    rec = records[1]
    regions = shift_regions(rec)                                     # (8, 8) in the rolled map
    for w in range(4):
        wr, wc = divmod(w, 2)
        ids = regions[wr * 4:wr * 4 + 4, wc * 4:wc * 4 + 4].flatten()
        cross = ids[:, None] != ids[None, :]
        assert bool((rec.weights[0, w][:, cross] == 0).all())
        assert bool((rec.weights[0, w][:, ~cross] > 0).all())
    assert int((regions[4:, 4:].unique()).numel()) == 4              # the corner window holds four regions
    assert not bool((records[0].weights == 0).any())                 # the regular block masks nothing


def test_window_maps_place_weights_inside_the_window(swin):
    _, records = record_window_attention(swin, torch.randn(1, 3, SIZE, SIZE))
    rec = records[1]
    w, q = window_of(rec, 4, 4)                                      # the centre token, shifted block
    assert (w, q) == (0, 10)                                         # rolled (2, 2): window 0, token (2, 2)
    pos = window_positions(rec, w)
    assert pos[q].tolist() == [4, 4] and pos[0].tolist() == [2, 2]   # the window spans rows/cols 2..5
    maps = window_map(rec, 0, w, q)                                  # (heads, 8, 8)
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(2))
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:6, 2:6] = True
    assert bool((maps[:, ~inside] == 0).all())                       # attention stays inside the window


def test_cli_writes_the_swin_figures(swin, tmp_path, capsys):
    run = save_model(swin, tmp_path / "run", classes=["a", "b", "c"])
    for i in range(2):
        Image.new("RGB", (20, 20), (90 * i, 120, 30)).save(tmp_path / f"{i}.png")
    out = tmp_path / "report"
    assert main(["explain", "--checkpoint", str(run), str(tmp_path / "0.png"), str(tmp_path / "1.png"),
                 "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    swin_files = ["swin_windows.png", "swin_window_attention_1.png", "swin_window_attention_2.png",
                  "swin_stages.png"]
    for name in swin_files:
        Image.open(out / name).verify()
        assert f'src="{name}"' in page
    assert "attention stays inside windows" in page and "connect neighbouring windows" in page
    printed = int(re.search(r"^(\d+) figures -> ", capsys.readouterr().out, re.M).group(1))
    written = sorted(p.name for p in out.glob("*.png"))
    assert printed == len(written) == len(swin_files) + 1            # + saliency
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["files"]) == written
    assert [b["shift"] for b in summary["swin_blocks"]] == [0, 2, 0, 0]


def test_a_vit_report_has_no_swin_figure(make_vit, tmp_path):
    summary = explain(make_vit(), (torch.rand(1, 3, 16, 16) * 255).to(torch.uint8), tmp_path)
    assert not any(f.startswith("swin_") for f in summary["files"]) and "swin_blocks" not in summary
    assert "rollout.png" in summary["files"]
