import argparse
import json

import pytest

from vitlab.studies import available_studies
from vitlab.studies.complexity import fit_slopes, judge, memory_mb, run, with_explicit_attention



def test_tiny_study(tmp_path):
    assert "complexity" in available_studies()
    res = run(argparse.Namespace(out=str(tmp_path), tiny=True, sizes=None, batch_size=1, repeats=1))
    assert (tmp_path / "complexity.png").is_file()
    saved = json.loads((tmp_path / "complexity.json").read_text())
    assert set(saved["models"]) == set(res["models"]) and "ViT (global attention)" in res["models"]
    vit = res["models"]["ViT (global attention)"]["points"]
    assert [p["tokens"] for p in vit] == [16, 64]
    assert vit[1]["gmacs"] > 4 * vit[0]["gmacs"]                       # 4x tokens: more than 4x the work
    # attention's n^2 term: the ViT's MAC slope exceeds every convolutional model's (which are exactly linear)
    for label, slopes in res["slopes"].items():
        if label.startswith(("ResNet", "ConvMixer")):
            assert slopes["gmacs"] == pytest.approx(1.0, abs=0.01)
            assert res["slopes"]["ViT (global attention)"]["gmacs"] > slopes["gmacs"]
    assert all(p["memory_mb_explicit"] >= p["memory_mb"] for p in vit)


def test_slopes_of_known_powers():
    points = [{"pixels": n, "gmacs": 3 * n ** 2, "seconds": 0.1 * n, "memory_mb": 5.0} for n in (10, 20, 40, 80)]
    s = fit_slopes(points)
    assert s["gmacs"] == pytest.approx(2.0) and s["seconds"] == pytest.approx(1.0)
    assert s["memory_mb"] == pytest.approx(0.0) and s["memory_mb_explicit"] is None
    verdict = judge({"ViT (global attention)": {"gmacs_upper": 1.8, "seconds_upper": 1.6},
                     "ResNet": {"gmacs_upper": 1.0, "seconds_upper": 1.7}})
    assert verdict["gmacs_upper"] and not verdict["seconds_upper"] and verdict["reproduced"] is False


def test_explicit_attention_stores_the_n_by_n_weights():
    from vitlab import create_model

    model = create_model("vit_micro_patch4_32", img_size=64, num_classes=2)    # 256 tokens, 4 heads, 6 blocks
    fused = memory_mb(model, 64, 1)
    explicit = with_explicit_attention(model, memory_mb, 64, 1)
    weights_mb = 6 * 4 * 257 * 257 * 4 / 2**20                                 # one float32 map per block
    assert explicit - fused >= weights_mb
    assert all(m.fused for m in model.modules() if hasattr(m, "fused"))
