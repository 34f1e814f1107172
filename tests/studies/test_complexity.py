import json

import pytest

from vitlab.studies.complexity import RESNET_LABEL, VIT_LABEL, claims, fit_slopes, memory_mb, with_explicit_attention
from vitlab.studies.verdict import INCONCLUSIVE, REPRODUCED, SMOKE_TEST


def test_quick_run(quick_all):
    out, _ = quick_all
    saved = json.loads((out / "complexity" / "complexity.json").read_text())
    assert (out / "complexity" / "complexity.png").is_file() and saved["sizes"] == [16, 32]
    vit = saved["models"][VIT_LABEL]["points"]
    assert [p["tokens"] for p in vit] == [16, 64]
    assert vit[1]["gmacs"] > 4 * vit[0]["gmacs"]                       # 4x tokens: more than 4x the work
    for label, slopes in saved["slopes"].items():                     # convolutions are exactly linear in pixels
        if label.startswith(("ResNet", "ConvMixer")):
            assert slopes["gmacs"] == pytest.approx(1.0, abs=0.01)
            assert saved["slopes"][VIT_LABEL]["gmacs"] > slopes["gmacs"]
    assert all(p["memory_mb_explicit"] >= p["memory_mb"] for p in vit)
    assert [c["verdict"] for c in saved["claims"]] == [SMOKE_TEST] * 3


def test_slopes_of_known_powers():
    points = [{"pixels": n, "gmacs": 3 * n ** 2, "seconds": 0.1 * n, "memory_mb": 5.0} for n in (10, 20, 40, 80)]
    s = fit_slopes(points)
    assert s["gmacs"] == pytest.approx(2.0) and s["seconds"] == pytest.approx(1.0)
    assert s["memory_mb"] == pytest.approx(0.0) and s["memory_mb_explicit"] is None


def test_claims_pair_the_slopes_over_rounds():
    def r(g, t, m):
        return {"gmacs_upper": g, "seconds_upper": t, "memory_mb_upper": m, "memory_mb_explicit_upper": m}
    per_round = {VIT_LABEL: [r(1.8, 1.5, 1.9), r(1.8, 1.1, 1.9), r(1.8, 1.6, 1.9)],
                 RESNET_LABEL: [r(1.0, 1.0, 1.0), r(1.0, 1.2, 1.0), r(1.0, 1.1, 1.0)]}
    macs, seconds, memory = claims(per_round, quick=False)
    assert macs["verdict"] == REPRODUCED and macs["difference"] == pytest.approx(0.8)
    # time differences 0.5, -0.1, 0.5: mean 0.3, sd 0.346, se 0.2 -> 0.3 < 0.4: inconclusive
    assert seconds["difference"] == pytest.approx(0.3) and seconds["standard_error"] == pytest.approx(0.2)
    assert seconds["verdict"] == INCONCLUSIVE and memory["verdict"] == REPRODUCED


def test_explicit_attention_stores_the_n_by_n_weights():
    from vitlab import create_model

    model = create_model("vit_micro_patch4_32", img_size=64, num_classes=2)    # 256 tokens, 4 heads, 6 blocks
    fused = memory_mb(model, 64, 1)
    explicit = with_explicit_attention(model, memory_mb, 64, 1)
    weights_mb = 6 * 4 * 257 * 257 * 4 / 2**20                                 # one float32 map per block
    assert explicit - fused >= weights_mb
    assert all(m.fused for m in model.modules() if hasattr(m, "fused"))
