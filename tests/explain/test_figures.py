import json
import re

import pytest
import torch
from PIL import Image

from vitlab.cli import main
from vitlab.errors import VitlabError
from vitlab.explain import (
    ExplainOptions,
    explain,
    patch_embedding_components,
    patch_logits,
    position_embedding_similarity,
)


def test_position_similarity_of_sincos_embedding(make_vit):
    model = make_vit(pos_embed="sincos", dim=64, img_size=32)               # 8x8 grid, fixed 2-D sin-cos
    sim = position_embedding_similarity(model)
    assert sim.shape == (8, 8, 8, 8)
    torch.testing.assert_close(torch.diagonal(sim.reshape(64, 64)), torch.ones(64))
    # 2-D structure: a patch is more like its neighbour than like the far corner
    assert float(sim[3, 3, 3, 4]) > float(sim[3, 3, 7, 0])
    assert float(sim[3, 3, 4, 3]) > float(sim[3, 3, 0, 7])


def test_position_similarity_needs_an_embedding(make_vit):
    with pytest.raises(VitlabError, match="position embedding"):
        position_embedding_similarity(make_vit(pos_embed="none"))


def test_filter_components_recover_a_planted_direction(make_vit):
    model = make_vit()
    w = model.patch_embed.proj.weight                                      # (32, 3, 4, 4)
    pattern = torch.randn(3, 4, 4)
    pattern /= pattern.norm()
    with torch.no_grad():   # filters = strong random multiples of one pattern + weak noise
        w.copy_(torch.randn(32, 1, 1, 1) * 5 * pattern + 0.01 * torch.randn_like(w))
    comps, explained = patch_embedding_components(model, k=5)
    assert comps.shape == (5, 3, 4, 4)
    assert abs(float((comps[0] * pattern).sum())) > 0.999
    assert float(explained[0]) > 0.99
    gram = comps.flatten(1) @ comps.flatten(1).T
    torch.testing.assert_close(gram, torch.eye(5), atol=1e-5, rtol=0)


def test_patch_logits_average_to_the_logits_of_an_avg_pooled_model(make_vit):
    model = make_vit(pool="avg", class_token=False)
    x = torch.randn(2, 3, 16, 16)
    maps = patch_logits(model, x)
    assert maps.shape == (2, 5, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(maps.mean(dim=(2, 3)), model(x), rtol=1e-4, atol=1e-5)


def test_patch_logits_cls_model_is_head_on_patch_tokens(vit):
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        want = vit.head(vit.forward_features(x)[:, 1:])                     # (1, 16, 5)
    torch.testing.assert_close(patch_logits(vit, x)[0, :, 1, 2], want[0, 1 * 4 + 2])


def _check_report(out, expected_files):
    page = (out / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(srcs) == sorted(expected_files)
    for name in srcs:
        with Image.open(out / name) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    assert "http" not in page                                               # viewable offline


def test_explain_writes_every_figure(vit, tmp_path):
    images = (torch.rand(2, 3, 16, 16) * 255).to(torch.uint8)
    summary = explain(vit, images, tmp_path, classes=list("abcde"),
                      options=ExplainOptions(layers=(1, 3, 10), discard_ratio=0.5, target_class=2))
    files = ["rollout.png", "attention_layers_1.png", "attention_distance.png", "saliency.png",
             "patch_logits.png", "pos_embed_similarity.png", "patch_embed_filters.png"]
    _check_report(tmp_path, [*files, "attention_layers_2.png"])
    assert len(summary["mean_attention_distance_px"]) == 3 and len(summary["mean_attention_distance_px"][0]) == 4
    assert summary["predictions"][0]["class"] in "abcde"
    assert json.loads((tmp_path / "summary.json").read_text())["figures"][0]["file"] == "rollout.png"
    assert not vit.training


def test_explain_skips_what_does_not_apply(make_vit, tmp_path):
    model = make_vit(pos_embed="none", pool="avg", class_token=False)
    images = (torch.rand(1, 3, 16, 16) * 255).to(torch.uint8)
    summary = explain(model, images, tmp_path)
    skipped = [f["caption"] for f in summary["figures"] if f["file"] is None]
    assert len(skipped) == 1 and "position embedding" in skipped[0]
    assert "Not drawn" in (tmp_path / "index.html").read_text()


def test_cli_explain_on_image_files(tmp_path, capsys):
    img = tmp_path / "red_square.png"
    canvas = Image.new("RGB", (50, 40), (20, 120, 20))
    canvas.paste((220, 20, 20), (10, 10, 25, 25))
    canvas.save(img)
    out = tmp_path / "report"
    rc = main(["explain", "--checkpoint", "vit_micro_patch4_32", str(img), "--out", str(out), "--layers", "1,6",
               "--head-fusion", "max", "--discard-ratio", "0.5", "--class", "3"])
    assert rc == 0
    assert "red_square.png" in capsys.readouterr().out
    assert (out / "index.html").is_file() and (out / "saliency.png").is_file()


def test_cli_explain_errors(tmp_path, capsys):
    assert main(["explain", "--checkpoint", "no_such_model", "x.png", "--out", str(tmp_path)]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["explain", "--checkpoint", "vit_micro_patch4_32", "--out", str(tmp_path)]) == 2
    assert "give image files" in capsys.readouterr().err


def test_hybrid_filters_are_not_pixels():
    import vitlab

    if "vit_micro_r8_s4_32" not in vitlab.list_models():
        pytest.skip("hybrid ViT is not registered")
    with pytest.raises(VitlabError, match="feature channels"):
        patch_embedding_components(vitlab.create_model("vit_micro_r8_s4_32", num_classes=2))


def test_training_report_rollout(vit, tmp_path):
    from vitlab.data import ImageSet
    from vitlab.train.report import plot_rollout

    images = (torch.rand(6, 3, 16, 16) * 255).to(torch.uint8)
    val = ImageSet(list("abcde"), [0, 0, 1, 2, 3, 4], 16, images=images)
    path = plot_rollout(vit, val, list("abcde"), tmp_path / "rollout.png", count=3)
    with Image.open(path) as im:
        assert im.size[0] > 100
    cnn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5))   # no attention: no figure
    assert plot_rollout(cnn, val, list("abcde"), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
