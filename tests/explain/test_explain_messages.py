"""What the explain report tells: layers chosen from the depth, the figure count it prints equals the files it
wrote, predictions (wrong ones marked) on the per-head figures, what the filter figure can show, colour bars,
the fixation legend, and a run directory's own validation images when no image is given."""
import json
import re

import pytest
import torch
from PIL import Image

import vitlab
from vitlab.checkpoint import save_model
from vitlab.cli import main
from vitlab.errors import VitlabError
from vitlab.explain import explain
from vitlab.explain import plots
from vitlab.explain.report import FIXATION_LEGEND, default_layers
from vitlab.explain.run import explain_checkpoint


@pytest.fixture(autouse=True)
def fast_figures(monkeypatch):
    """Figures are built but not rasterised (a placeholder file per PNG): these tests read names, titles and
    captions, and rasterising is most of explain's time on a busy 2-core machine."""
    from pathlib import Path

    monkeypatch.setattr(plots, "save_figure", lambda fig, path: Path(path).write_bytes(b"png") and Path(path))


def test_default_layers_follow_the_depth():
    assert default_layers(1) == [1]
    assert default_layers(6) == [1, 2, 3, 4, 5, 6]              # a small model: every layer
    assert default_layers(7) == [1, 4, 7]
    assert default_layers(12) == [1, 6, 12]                      # first, middle, last
    assert default_layers(24) == [1, 12, 24]


def test_a_six_layer_model_shows_its_last_layer(make_vit, tmp_path):
    model = make_vit(depth=6)
    images = (torch.rand(1, 3, 16, 16) * 255).to(torch.uint8)
    assert explain(model, images, tmp_path)["attention_layers"] == [1, 2, 3, 4, 5, 6]


def test_printed_figure_count_equals_the_files_written(tmp_path, capsys):
    torch.manual_seed(0)
    save_model(vitlab.create_model("vit_micro_patch4_32", num_classes=3), tmp_path / "ck", classes=["a", "b", "c"])
    paths = []
    for i in range(3):
        Image.new("RGB", (32, 32), (60 * i, 100, 30)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    assert main(["explain", "--checkpoint", str(tmp_path / "ck"), *paths, "--out", str(tmp_path / "out")]) == 0
    printed = int(re.search(r"^(\d+) figures -> ", capsys.readouterr().out, re.M).group(1))
    written = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert printed == len(written) == 9                    # 3 per-image attention figures + 6 others
    assert sorted(json.loads((tmp_path / "out" / "summary.json").read_text())["files"]) == written


def test_per_head_figures_give_the_prediction_and_mark_a_wrong_one(vit, tmp_path, monkeypatch):
    titles = []
    original = plots.figure_cls_attention
    monkeypatch.setattr(plots, "figure_cls_attention",
                        lambda image, maps, layers, title, alert=False: titles.append((title, alert))
                        or original(image, maps, layers, title, alert))
    images = (torch.rand(2, 3, 16, 16) * 255).to(torch.uint8)
    with torch.no_grad():
        from vitlab.explain import model_input

        predicted = vit(model_input(vit, images)).argmax(-1).tolist()
    wrong = (predicted[1] + 1) % 5
    summary = explain(vit, images, tmp_path, classes=list("abcde"), names=["one", "two"],
                      labels=[predicted[0], wrong])
    assert [p["correct"] for p in summary["predictions"]] == [True, False]
    assert summary["predictions"][1]["true"] == "abcde"[wrong]
    (first, alert_first), (second, alert_second) = titles
    assert first.startswith(f"one: predicted {'abcde'[predicted[0]]} ") and "WRONG" not in first and not alert_first
    assert second.startswith(f"two: predicted {'abcde'[predicted[1]]} ") and alert_second
    assert f"WRONG (true {'abcde'[wrong]})" in second


def test_per_head_maps_have_colour_bars():
    image = (torch.rand(3, 16, 16) * 255).to(torch.uint8)
    maps = torch.rand(2, 4, 4, 4)                                    # 2 layers, 4 heads, 4x4 grid
    fig = plots.figure_cls_attention(image, maps, [1, 6], "t")
    colour_bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colour_bars) == 2                                      # one per layer (row)
    assert colour_bars[0].get_ylim()[1] == pytest.approx(float(max(maps[0].max(), maps[0].mean(0).max())))


def test_saliency_figure_has_a_legend_for_the_fixations(vit, tmp_path):
    images = (torch.rand(1, 3, 16, 16) * 255).to(torch.uint8)
    rows = [[(plots.image_hwc(images[0]), "x")]]
    fig = plots.figure_rows(images, rows, "t", legend=FIXATION_LEGEND)
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert labels == ["first fixation", "later fixations, numbered in order", "scan path between them"]


def test_filter_figure_of_tiny_patches_is_skipped_with_the_reason(make_vit, tmp_path):
    model = make_vit(patch_size=2, img_size=8)
    summary = explain(model, (torch.rand(1, 3, 8, 8) * 255).to(torch.uint8), tmp_path)
    skipped = [f["caption"] for f in summary["figures"] if f["file"] is None]
    assert skipped == ["filters: not applicable (its 2x2 patches have too few pixels for a filter to show spatial "
                       "structure (the paper's figure is of 16x16 patches))"]


def test_filter_figure_of_gray_input_says_what_it_shows(make_vit, tmp_path):
    from vitlab.explain import patch_embedding_components

    model = make_vit()                                               # 4x4 patches, 3 channels
    gray = (torch.rand(2, 1, 16, 16) * 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    summary = explain(model, gray, tmp_path)
    caption = next(f["caption"] for f in summary["figures"] if f["file"] == "patch_embed_filters.png")
    assert "in gray: the inputs are gray-scale (R = G = B)" in caption
    assert "all 16 directions of the 16-dimensional patch space" in caption      # 4x4x1: k = 16 is all of it
    comps, _ = patch_embedding_components(model, 28, gray=True)
    summed = model.patch_embed.proj.weight.detach().sum(1).flatten(1).double()   # what a gray input sees
    centred = summed - summed.mean(0)
    torch.testing.assert_close(comps.flatten(1).double().abs(),
                               torch.linalg.svd(centred, full_matrices=False)[2].abs().float().double(),
                               atol=1e-5, rtol=0)
    colour = explain(model, (torch.rand(1, 3, 16, 16) * 255).to(torch.uint8), tmp_path / "rgb")
    caption = next(f["caption"] for f in colour["figures"] if f["file"] == "patch_embed_filters.png")
    assert "shown as RGB" in caption and "directions" not in caption           # 48 > 28 components


def test_a_run_directory_explains_its_own_validation_images(tmp_path):
    torch.manual_seed(0)
    model = vitlab.create_model("vit_micro_patch2_8", num_classes=10)
    save_model(model, tmp_path / "run", classes=[str(i) for i in range(10)], data="digits")
    summary = explain_checkpoint(tmp_path / "run", [], tmp_path / "out", samples=2)
    assert [p["image"] for p in summary["predictions"]] == ["digits val #0 (true 2)", "digits val #449 (true 9)"]
    assert all("correct" in p for p in summary["predictions"])
    save_model(model, tmp_path / "bare", classes=[str(i) for i in range(10)])      # no "data" in config.json
    with pytest.raises(VitlabError, match="give image files or --data SPEC"):
        explain_checkpoint(tmp_path / "bare", [], tmp_path / "out2")
