"""The studies' verdict rule against hand computations."""
import math

import pytest

from vitlab.studies.verdict import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, SMOKE_TEST, compare, format_mean_std,
                                    undertrained)


def test_paired_uses_the_per_seed_differences():
    # differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3) = 0.577; 2 > 2 * 0.577 -> reproduced
    r = compare([11, 12, 13], [10, 10, 10], paired=True)
    assert r["difference"] == pytest.approx(2.0)
    assert r["standard_error"] == pytest.approx(1 / math.sqrt(3))
    assert r["verdict"] == REPRODUCED
    assert compare([10, 10, 10], [11, 12, 13], paired=True)["verdict"] == NOT_REPRODUCED
    assert compare([10, 10, 10], [11, 12, 13], paired=True, higher_is_claimed=False)["verdict"] == REPRODUCED


def test_unpaired_standard_error_and_inconclusive():
    # a: mean 2, var 1; b: mean 1, var 1 -> se = sqrt(1/3 + 1/3) = 0.816; diff 1 < 1.63 -> inconclusive
    r = compare([1, 2, 3], [0, 1, 2], paired=False)
    assert r["standard_error"] == pytest.approx(math.sqrt(2 / 3))
    assert r["verdict"] == INCONCLUSIVE


def test_one_seed_and_quick_mode_give_no_verdict():
    assert compare([0.9], [0.1], paired=True)["verdict"] == INCONCLUSIVE
    assert compare([0.9, 0.91], [0.1, 0.11], paired=True, quick=True)["verdict"] == SMOKE_TEST
    with pytest.raises(ValueError, match="as many A as B"):
        compare([1, 2], [1], paired=True)


def test_format():
    assert format_mean_std([1.0, 2.0, 3.0], 2) == "2.00 ± 1.00"
    assert format_mean_std([0.5]) == "0.500"


def test_undertrained_floor_is_halfway_from_chance_and_names_the_models():
    # 6 classes: chance 16.7%, floor 58.3%
    assert undertrained({"ViT": [60.0, 57.0], "ResNet": [90.0, 91.0]}, 6) is None          # mean 58.5 >= floor
    reason = undertrained({"ViT": [28.0, 29.0], "ResNet": [41.0, 43.0], "hybrid": [70.0]}, 6)
    assert reason == ("not past chance by a wide margin (floor 58.3%, chance 16.7%): ViT 28.5%, ResNet 42.0%")


def test_undertrained_models_make_any_difference_inconclusive():
    a, b = [0.9, 0.91, 0.92], [0.1, 0.11, 0.12]                    # far apart: reproduced on the numbers alone
    assert compare(a, b, paired=True)["verdict"] == REPRODUCED
    result = compare(a, b, paired=True, undertrained="ViT at chance")
    assert result["verdict"] == INCONCLUSIVE and result["undertrained"] == "ViT at chance"
    assert result["difference"] == pytest.approx(0.8)              # the numbers are still reported
    quick = compare(a, b, paired=True, quick=True, undertrained="ViT at chance")
    assert quick["verdict"] == SMOKE_TEST and "undertrained" not in quick
