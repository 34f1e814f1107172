"""_common.finish, the end of every study: the JSON written is the results dict, each figure is drawn after it
(into the file it is named by), and one line per claim goes to the study's own logger."""
import json
import logging

from vitlab.studies import _common as common

CLAIMS = [{"statement": "A beats B", "verdict": "reproduced", "difference": 1.23456, "best": "A", "runner_up": "B"},
          {"statement": "C beats D", "verdict": "inconclusive", "difference": -0.5, "best": "C", "runner_up": "D"}]


def _results():
    return {"study": "some-study", "quick": False, "claims": [dict(c) for c in CLAIMS], "table": [{"x": 1.5}],
            "nested": {"per_seed": [1, 2], "none": None}}


def test_finish_writes_the_json_then_the_plots_and_logs_each_claim(tmp_path, caplog):
    results, drawn = _results(), []
    log = logging.getLogger("vitlab.studies.some_study")

    def draw(path):
        drawn.append((path, json.loads((tmp_path / "some_study.json").read_text())))   # the JSON is there first
        path.write_bytes(b"png")

    with caplog.at_level(logging.INFO, logger="vitlab.studies.some_study"):
        returned = common.finish(results, tmp_path, "some-study", log=log, difference="%+.2f points",
                                 plots={"some_study.png": draw, "extra.png": draw})
    assert returned is results
    assert json.loads((tmp_path / "some_study.json").read_text()) == results       # dashes become underscores
    assert [p for p, _ in drawn] == [tmp_path / "some_study.png", tmp_path / "extra.png"]
    assert all(saved == results for _, saved in drawn)
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("vitlab.studies.some_study", logging.INFO, "some-study: A beats B: reproduced (difference +1.23 points)"),
        ("vitlab.studies.some_study", logging.INFO, "some-study: C beats D: inconclusive (difference -0.50 points)")]


def test_finish_line_variants(tmp_path, caplog):
    log = logging.getLogger("vitlab.studies.some_study")
    with caplog.at_level(logging.INFO, logger="vitlab.studies.some_study"):
        common.finish(_results(), tmp_path, "some-study", log=log, difference=None, prefix="x study")
        common.finish(_results(), tmp_path, "some-study", log=log,
                      line="best %(best)s, runner-up %(runner_up)s: %(verdict)s (difference %(difference)+.3g)")
        common.finish({"study": "s", "claim": CLAIMS[0]}, tmp_path, "s", log=log)     # no "claims": no lines
    assert caplog.messages == ["x study: A beats B: reproduced", "x study: C beats D: inconclusive",
                               "some-study: best A, runner-up B: reproduced (difference +1.23)",
                               "some-study: best C, runner-up D: inconclusive (difference -0.5)"]
    assert json.loads((tmp_path / "s.json").read_text()) == {"study": "s", "claim": CLAIMS[0]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "some_study.json"]   # no plots: no pictures
