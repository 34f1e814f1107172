import argparse
import json

import pytest
import torch

from vitlab import create_model
from vitlab.checkpoint import save_model
from vitlab.io import write_json
from vitlab.studies import available_studies
from vitlab.studies.robustness import drop_patches, fgsm, judge, pgd, run, shuffle_patches



def test_drop_patches_blacks_out_the_fraction():
    images = torch.rand(3, 3, 8, 8) + 0.1
    out = drop_patches(images, 0.5, (2, 2), torch.Generator().manual_seed(0))
    dropped = (out.view(3, 3, 4, 2, 4, 2) == 0).all(dim=(1, 3, 5))          # (3, 4, 4) patch fully black
    assert dropped.sum(dim=(1, 2)).tolist() == [8, 8, 8]
    kept = ~dropped.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, None].expand_as(images)
    assert torch.equal(out[kept], images[kept])
    assert torch.equal(drop_patches(images, 0.0, (2, 2), torch.Generator()), images)


def test_shuffle_permutes_blocks():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = shuffle_patches(images, 4, torch.Generator().manual_seed(1))
    def blocks(x):
        return x.view(2, 3, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, 16, -1)
    a, b = blocks(images), blocks(out)
    for i in range(2):                                                      # same set of blocks, another order
        assert sorted(map(tuple, a[i].tolist())) == sorted(map(tuple, b[i].tolist()))
    assert not torch.equal(out, images)
    assert torch.equal(shuffle_patches(images, 1, torch.Generator()), images)


def test_attacks_stay_in_the_ball_and_hurt():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x = torch.rand(16, 3, 8, 8)
    y = model(x).argmax(-1)                                                 # labels the model gets right
    eps = 8 / 255
    adv = fgsm(model, x, y, eps)
    assert float((adv - x).abs().max()) <= eps + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
    strong = pgd(model, x, y, 0.3, steps=10, generator=torch.Generator().manual_seed(0))
    assert float((strong - x).abs().max()) <= 0.3 + 1e-6
    assert (model(strong).argmax(-1) == y).float().mean() < 0.5


def test_tiny_study_on_saved_models(tmp_path):
    assert "robustness" in available_studies()
    for sub, name in (("vit", "vit_micro_patch2_8"), ("resnet", "resnet_micro_32")):
        model = create_model(name, num_classes=10, img_size=8)
        save_model(model, tmp_path / sub, classes=[str(i) for i in range(10)])
        write_json(tmp_path / sub / "metrics.json", {"model": name, "epochs": 0, "val_top1": 10.0})
    args = argparse.Namespace(out=str(tmp_path), tiny=True, reuse=True, data="digits", img_size=16, vit="unused",
                              resnet="resnet_micro_32", epochs=30, eval_images=450, attack_images=256, pgd_steps=5,
                              repeats=3, seed=0)
    res = run(args)
    assert (tmp_path / "robustness.png").is_file()
    saved = json.loads((tmp_path / "robustness.json").read_text())
    assert saved["eval_images"] == 32 and set(saved["models"]) == {"ViT", "ResNet"}
    for r in res["models"].values():
        assert len(r["patch_drop"]) == 10 and list(r["patch_shuffle"]) == [1, 2, 4, 8]
        assert r["patch_drop"][0.0] == r["clean"] and r["fgsm"][0.0] == r["pgd"][0.0]   # eps 0: clean subset
    # every verdict is what the reported accuracies imply: mean corrupted accuracy / clean accuracy, compared
    for key in ("patch_drop", "patch_shuffle", "noise", "fgsm", "pgd"):
        kept = {label: _kept_by_hand(r[key], r["clean"]) for label, r in res["models"].items()}
        claim = res["claims"][key]
        assert claim["vit_relative"] == pytest.approx(kept["ViT"], abs=1e-4)
        assert claim["resnet_relative"] == pytest.approx(kept["ResNet"], abs=1e-4)
        expected = None if None in kept.values() else kept["ViT"] > kept["ResNet"]
        assert claim["vit_more_robust"] is expected
    assert res["claims"]["reproduced"] is res["claims"]["patch_drop"]["vit_more_robust"]
    assert saved["claims"] == json.loads(json.dumps(res["claims"]))


def _kept_by_hand(curve, clean):
    corrupted = list(curve.values())[1:]                                   # the first level is the clean one
    return None if clean == 0 else sum(corrupted) / len(corrupted) / clean


def _models(vit_drop, resnet_drop, vit_clean=80.0, resnet_clean=90.0):
    other = {0.0: 50.0, 1.0: 25.0}
    return {label: {"clean": clean, "patch_drop": drop, "patch_shuffle": other, "noise": other, "fgsm": other,
                    "pgd": other} for label, clean, drop in (("ViT", vit_clean, vit_drop),
                                                             ("ResNet", resnet_clean, resnet_drop))}


def test_judge_on_numbers_worked_by_hand():
    # ViT keeps (60 + 40) / 2 / 80 = 0.625 of its clean accuracy, ResNet (45 + 9) / 2 / 90 = 0.3
    claims = judge(_models({0.0: 80.0, 0.5: 60.0, 0.9: 40.0}, {0.0: 90.0, 0.5: 45.0, 0.9: 9.0}))
    assert claims["patch_drop"] == {"vit_relative": 0.625, "resnet_relative": 0.3, "vit_more_robust": True}
    assert claims["reproduced"] is True and claims["summary"].endswith("claim reproduced")
    assert claims["noise"] == {"vit_relative": 0.3125, "resnet_relative": 0.2778, "vit_more_robust": True}  # 25/80
    # the other way round: ViT 20 / 80 = 0.25 against ResNet 0.3
    claims = judge(_models({0.0: 80.0, 0.5: 20.0}, {0.0: 90.0, 0.5: 45.0, 0.9: 9.0}))
    assert claims["patch_drop"]["vit_relative"] == 0.25 and claims["patch_drop"]["vit_more_robust"] is False
    assert claims["reproduced"] is False and claims["summary"].endswith("claim not reproduced")
    # a model at 0% clean accuracy keeps nothing measurable: no verdict
    claims = judge(_models({0.0: 0.0, 0.5: 0.0}, {0.0: 90.0, 0.5: 45.0}, vit_clean=0.0))
    assert claims["patch_drop"] == {"vit_relative": None, "resnet_relative": 0.5, "vit_more_robust": None}
