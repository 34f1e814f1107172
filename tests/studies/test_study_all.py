"""`vitlab study all --quick`: every study runs as a smoke test, each writes its JSON (command, claims with no
verdict) and pictures, and the one offline page shows them all - checked in headless Chromium."""
import json

import pytest

from vitlab.cli import main
from vitlab.studies import available_studies
from vitlab.studies.course import PAGE, claims_of, render_claims, table_rows
from vitlab.studies.verdict import SMOKE_TEST

CLASSIFICATION_STUDIES = {"attention-distance", "complexity", "distill", "robustness", "stn", "pos-embed", "scaling",
                          "architectures", "hybrid"}


def test_every_study_runs_quick_and_reports_no_verdict(quick_all):
    out, summary = quick_all
    assert set(summary) == set(available_studies())
    assert all(entry["error"] is None for entry in summary.values()), summary
    for name in summary:
        saved = [json.loads(p.read_text()) for p in (out / name).glob("*.json")]
        results = next(r for r in saved if claims_of(r))
        assert all(c["verdict"] == SMOKE_TEST for c in claims_of(results)), name
        assert summary[name]["verdicts"] and set(summary[name]["verdicts"]) == {SMOKE_TEST}
        assert list((out / name).glob("*.png")), f"{name} wrote no picture"
        if name in CLASSIFICATION_STUDIES:                      # these rebuild the command from their options
            assert results["command"] == f"vitlab study {name} --quick --out {out / name}"


def test_page_lists_every_study_with_its_figures_and_command(quick_all):
    out, summary = quick_all
    page = (out / PAGE).read_text()
    for name in summary:
        assert f"<section id='{name}'>" in page and f"vitlab study {name}" in page
    pictures = sum(len(list((out / name).glob("*.png"))) for name in summary)
    assert page.count("<img src='data:image/png;base64,") == pictures
    assert "Quick mode: every study ran as a smoke test" in page


def test_page_renders_in_chromium_and_every_figure_loads(chromium, quick_all):
    from playwright.sync_api import sync_playwright

    out, summary = quick_all
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto((out / PAGE).as_uri())
        sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
        sections = page.eval_on_selector_all("section", "s => s.map(x => x.id)")
        browser.close()
    assert sections == list(summary)
    assert sizes and all(done and width > 100 for done, width in sizes), sizes


def test_tables_and_claims_render_from_both_result_shapes():
    rows = table_rows({"U-Net": {"val_miou": "0.5 ± 0.1", "val_miou_std": 0.1, "val_miou_per_seed": [0.4, 0.6]}})
    assert rows == [{"": "U-Net", "val_miou": "0.5 ± 0.1"}]                     # lists and *_std columns dropped
    assert claims_of({"claim": {"statement": "A > B", "verdict": "reproduced"}}) == [
        {"statement": "A > B", "verdict": "reproduced"}]
    text = render_claims([{"statement": "A > B", "verdict": "not reproduced", "difference": -2.0,
                           "standard_error": 0.5, "paired": True, "n": [3, 3]}])
    assert "not reproduced" in text and "difference -2" in text and "2·SE 1" in text and "paired" in text


def test_unknown_study_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:                              # refused while the line is parsed
        main(["study", "all", "--only", "bogus", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--only" in err and "bogus" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
