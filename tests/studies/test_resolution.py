"""resolution: the quick run's JSON and run directories, the models rebuilt at a larger test size (learned PE
resampled, sin-cos recomputed, PEG unchanged), the verdicts from hand-made numbers, and the one-line refusal."""
import argparse
import json

import pytest
import torch

import vitlab
from vitlab.checkpoint import save_model
from vitlab.cli import main
from vitlab.layers import resample_pos_embed, sincos_2d
from vitlab.studies.resolution import ENCODINGS, accuracy_at_sizes, summarize
from vitlab.studies.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, SMOKE_TEST


def test_quick_study(quick_all):
    out, _ = quick_all
    out = out / "resolution"
    saved = json.loads((out / "resolution.json").read_text())
    assert saved["command"] == f"vitlab study resolution --quick --out {out}"
    assert saved["sizes"] == [16, 32] and saved["train_size"] == 16 and saved["high_size"] == 32
    assert [c["verdict"] for c in saved["claims"]] == [SMOKE_TEST] * 3
    assert set(saved["accuracy"]) == set(ENCODINGS)
    drops = {e: saved["accuracy"][e]["16"]["mean"] - saved["accuracy"][e]["32"]["mean"] for e in ENCODINGS}
    assert saved["claims"][0]["difference"] == pytest.approx(drops["PEG"] - drops["learned PE"])
    assert (out / "resolution.png").stat().st_size > 0
    config = {d: json.loads((out / d / "config.json").read_text())
              for d in ("learned-seed0", "sincos-seed0", "peg-seed0", "finetune-seed0", "high-seed0")}
    assert config["sincos-seed0"]["model_args"]["pos_embed"] == "sincos"
    assert config["peg-seed0"]["model"] == "cpvt_micro_patch4_32"
    tune = config["finetune-seed0"]["train"]
    assert tune["checkpoint"] == str(out / "learned-seed0") and tune["img_size"] == 32 and tune["epochs"] == 1
    assert config["high-seed0"]["train"]["checkpoint"] is None and config["high-seed0"]["train"]["img_size"] == 32


@pytest.fixture(scope="module")
def trained_at_16(tmp_path_factory):
    """Three untrained micro models built at 16 px, saved as run directories, and a 2-class folder of 32 px."""
    from PIL import Image

    root = tmp_path_factory.mktemp("resolution")
    torch.manual_seed(0)
    models = {"learned": vitlab.create_model("vit_micro_patch4_32", num_classes=2, img_size=16),
              "sincos": vitlab.create_model("vit_micro_patch4_32", num_classes=2, img_size=16, pos_embed="sincos"),
              "peg": vitlab.create_model("cpvt_micro_patch4_32", num_classes=2, img_size=16)}
    for name, model in models.items():
        save_model(model.eval(), root / name, classes=["a", "b"])
    g = torch.Generator().manual_seed(1)
    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / "data" / split / label).mkdir(parents=True)
            for i in range(3):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / "data" / split / label / f"{i}.png")
    return root, models


def test_models_rebuilt_at_a_larger_size(trained_at_16):
    from vitlab.checkpoint import load_model

    root, models = trained_at_16
    learned = load_model(root / "learned", img_size=32)
    expected = resample_pos_embed(models["learned"].pos_embed.detach(), (8, 8), (4, 4), 1)
    torch.testing.assert_close(learned.pos_embed.detach(), expected)             # bicubic, [CLS] kept
    sincos = load_model(root / "sincos", img_size=32)
    torch.testing.assert_close(sincos.pos_embed[0, 1:], sincos_2d((8, 8), 64))   # recomputed for the 8x8 grid
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():                                                       # the PEG runs as it is
        torch.testing.assert_close(load_model(root / "peg", img_size=32)(x), models["peg"](x))


def test_accuracy_at_sizes_matches_direct_evaluation(trained_at_16):
    from vitlab.checkpoint import load_model
    from vitlab.data import build_data

    root, _ = trained_at_16
    data, val_sets = str(root / "data"), {}
    top1 = accuracy_at_sizes(root / "peg", data, [16, 32], val_sets)
    assert set(val_sets) == {16, 32} and len(val_sets[32]) == 6
    for size in (16, 32):                                   # by hand: normalise, argmax, compare with labels
        model = load_model(root / "peg", img_size=size)
        val = build_data(data, size).val
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (model.cfg.mean, model.cfg.std))
        with torch.no_grad():
            predicted = model((val.images.float() / 255 - mean) / std).argmax(1)      # (6,)
        assert val.images.shape[-1] == size
        assert top1[size] == pytest.approx(100.0 * (predicted == val.labels).float().mean().item())


def _fake_args(**kw):
    base = dict(train_size=32, high_size=48, epochs=12, finetune_epochs=2, margin=2.0, quick=False, seed=0,
                seeds=3, data="shapes", out="runs/study-resolution", test_sizes=[32, 48], train_per_class=300,
                finetune_lr=1e-4, vit="vit_micro_patch4_32", cpvt="cpvt_micro_patch4_32")
    return argparse.Namespace(**{**base, **kw})


def test_verdicts_from_hand_made_numbers():
    acc = {"learned PE": [{32: 60.0, 48: 50.0}, {32: 62.0, 48: 51.0}, {32: 61.0, 48: 49.0}],   # drops 10, 11, 12
           "sin-cos PE": [{32: 55.0, 48: 50.0}] * 3,
           "PEG": [{32: 60.0, 48: 59.0}, {32: 61.0, 48: 59.0}, {32: 60.0, 48: 58.5}]}            # drops 1, 2, 1.5
    low = [{"val_top1": 60.0, "wall_time_s": 100.0, "chance_top1": 16.67}] * 3
    tuned = [{"val_top1": v, "wall_time_s": 20.0 + i} for i, v in enumerate((85.0, 87.0, 86.0))]
    high = [{"val_top1": v, "wall_time_s": 250.0 + i, "num_classes": 6} for i, v in enumerate((88.0, 89.0, 88.0))]
    r = summarize(_fake_args(), [0, 1, 2], [32, 48], acc, {"fine-tuned": tuned, "low size": low, "high size": high})
    drop, noninferior, time = r["claims"]
    assert drop["difference"] == pytest.approx(1.5 - 11.0) and drop["verdict"] == REPRODUCED
    # accuracy: differences -3, -2, -2 (mean -2.33); + margin 2 -> -0.33 with SE 0.33: not beyond 2 SE
    assert noninferior["difference"] == pytest.approx(-1 / 3) and noninferior["verdict"] == INCONCLUSIVE
    assert noninferior["accuracy_difference"]["mean"] == pytest.approx(-7 / 3)
    # time: 120-122 s against 250-252 s: ratio ~0.48, the difference -130 s with SE 0
    assert time["difference"] == pytest.approx(-130.0) and time["verdict"] == REPRODUCED
    assert time["time_ratio"]["mean"] == pytest.approx((120 / 250 + 121 / 251 + 122 / 252) / 3)
    r = summarize(_fake_args(margin=0.0), [0, 1, 2], [32, 48], acc,
                  {"fine-tuned": tuned, "low size": low, "high size": high})
    assert r["claims"][1]["verdict"] == NOT_REPRODUCED                   # without a margin: clearly below
    # the same differences between models near chance (6 classes: floor 58.3%) decide nothing
    near = [{**m, "val_top1": m["val_top1"] - 60.0} for m in high]
    r = summarize(_fake_args(margin=0.0), [0, 1, 2], [32, 48], acc,
                  {"fine-tuned": [{**m, "val_top1": m["val_top1"] - 60.0} for m in tuned], "low size": low,
                   "high size": near})
    assert r["claims"][1]["verdict"] == INCONCLUSIVE and "fine-tuned 26.0%" in r["claims"][1]["undertrained"]


def test_high_size_not_above_train_size_is_refused_in_one_line(tmp_path, capsys):
    code = main(["study", "resolution", "--train-size", "32", "--high-size", "32", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--high-size" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
