import argparse
import json

import pytest
import torch

from vitlab.studies.robustness import attack_matched, drop_patches, fgsm, kept, pgd, shuffle_patches, summarize
from vitlab.studies.verdict import NOT_REPRODUCED, REPRODUCED, SMOKE_TEST



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


def test_quick_study_reports_every_corruption_for_three_models(quick_all):
    out, _ = quick_all
    saved = json.loads((out / "robustness" / "robustness.json").read_text())
    assert (out / "robustness" / "robustness.png").is_file()
    run = saved["per_seed"][0]
    assert set(run["models"]) == {"ViT", "ResNet", "hybrid"} and saved["eval_images"] == 24
    for r in run["models"].values():
        assert len(r["patch_drop"]) == 10 and list(r["patch_shuffle"]) == ["1", "2", "4", "8"]
        assert r["patch_drop"]["0.0"] == r["clean"]
    assert [c["verdict"] for c in saved["claims"]] == [SMOKE_TEST, SMOKE_TEST]


def test_evaluations_in_parallel_processes_give_the_numbers_of_the_quick_run(quick_all):
    """evaluate_seeds with --jobs 2 (each model's corruptions and each seed's attacks in spawned processes) gives
    the per-seed numbers that the quick study computed in turn."""
    from vitlab.data import build_data
    from vitlab.studies.robustness import evaluate_seeds

    out, _ = quick_all
    saved = json.loads((out / "robustness" / "robustness.json").read_text())
    folder = next((out / "robustness").glob("quick-data*"))
    args = argparse.Namespace(quick=False, jobs=2, attack_images=8, pgd_steps=2, repeats=1)
    data = build_data(str(folder), saved["img_size"])
    images = torch.stack([data.val[i][0] for i in range(24)]).float() / 255.0
    names = {m: saved["per_seed"][0]["models"][m]["name"] for m in ("ViT", "ResNet", "hybrid")}
    trained = {(m, s): {"val_top1": saved["per_seed"][0]["models"][m]["train_val_top1"]} for m in names
               for s in saved["seeds"]}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)                                # one thread per process, as in the quick run
    try:
        again = evaluate_seeds(names, trained, out / "robustness", images, data.val.labels[:24], args,
                               saved["seeds"])
    finally:
        torch.set_num_threads(threads)
    assert json.loads(json.dumps(again)) == saved["per_seed"]


def test_attacks_run_on_the_images_every_model_gets_right():
    torch.manual_seed(0)
    x = torch.rand(32, 3, 4, 4)
    a, b = (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3)) for _ in range(2))
    y = a(x).argmax(-1)                                                     # model a is always right
    both = int((b(x).argmax(-1) == y).sum())
    assert 0 < both < 32
    out = attack_matched({"ViT": a, "ResNet": b}, x, y, argparse.Namespace(pgd_steps=2), seed=0)
    assert out["matched_images"] == both
    assert out["ViT"]["fgsm"][0.0] == out["ResNet"]["pgd"][0.0] == 100.0    # eps 0: every matched image right
    assert out["ViT"]["pgd"][8.0] < 100.0


def test_kept_and_claims_on_numbers_worked_by_hand():
    def seed(vit_drop, cnn_drop, vit_pgd, cnn_pgd):
        other = {0.0: 50.0, 1.0: 25.0}
        return {"models": {
            "ViT": {"clean": 80.0, "patch_drop": vit_drop, "patch_shuffle": other, "noise": other,
                    "fgsm": other, "pgd": vit_pgd, "name": "v"},
            "ResNet": {"clean": 90.0, "patch_drop": cnn_drop, "patch_shuffle": other, "noise": other,
                       "fgsm": other, "pgd": cnn_pgd, "name": "r"}}, "matched_images": 10}
    per_seed = [seed({0.0: 80.0, 0.5: 60.0, 0.9: 40.0}, {0.0: 90.0, 0.5: 45.0, 0.9: 9.0},
                     {0.0: 100.0, 2.0: 30.0}, {0.0: 100.0, 2.0: 50.0}),
                seed({0.0: 80.0, 0.5: 56.0, 0.9: 40.0}, {0.0: 90.0, 0.5: 45.0, 0.9: 18.0},
                     {0.0: 100.0, 2.0: 20.0}, {0.0: 100.0, 2.0: 60.0})]
    # ViT keeps (60 + 40) / 2 / 80 = 0.625 and (56 + 40) / 2 / 80 = 0.6; ResNet 0.3 and 0.35
    assert kept(per_seed, "ViT", "patch_drop") == pytest.approx([0.625, 0.6])
    assert kept(per_seed, "ResNet", "patch_drop") == pytest.approx([0.3, 0.35])
    assert kept(per_seed, "ViT", "pgd") == pytest.approx([0.3, 0.2])            # attacks: out of 100% matched
    args = argparse.Namespace(quick=False, data="shapes", img_size=32, epochs=1, vit_epochs=2, hybrid_epochs=3,
                              out="runs/study-robustness")
    results = summarize(per_seed, args, [0, 1], 10)
    drop, adversarial = results["claims"]
    assert (results["epochs"], results["vit_epochs"], results["hybrid_epochs"]) == (1, 2, 3)
    # drop differences 0.325, 0.25: mean 0.2875, se 0.0375 -> reproduced
    assert drop["difference"] == pytest.approx(0.2875) and drop["standard_error"] == pytest.approx(0.0375)
    assert drop["verdict"] == REPRODUCED
    # PGD differences -0.2, -0.4: mean -0.3, se 0.1 -> the opposite sign beyond 2 se: not reproduced
    assert adversarial["difference"] == pytest.approx(-0.3) and adversarial["verdict"] == NOT_REPRODUCED
