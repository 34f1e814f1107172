"""`vitlab study all`: every study, then one offline HTML page - the course report a teacher opens in class.

Per claim: the lecture's statement and its source paper (a study module's CLAIM and PAPER, else its docstring's
first line), our figures (embedded, so the page is one file that needs no network), the table with mean ± std,
the verdicts computed by vitlab.studies.verdict, the wall time and the command that reruns it.
(No NAME here: this module is not a study itself.)
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

from ..errors import VitlabError
from ..io import write_text

log = logging.getLogger(__name__)

PAGE = "index.html"


def study_args(module: Any, name: str, out: Path, quick: bool) -> argparse.Namespace:
    """A study's default arguments (as `vitlab study NAME [--quick]` would parse them), writing under out/NAME."""
    p = argparse.ArgumentParser(add_help=False)
    module.add_arguments(p)
    has_quick = any("--quick" in a.option_strings for a in p._actions)
    args = p.parse_args(["--quick"] if quick and has_quick else [])
    args.out = str(out / name)
    if not hasattr(args, "quick"):
        args.quick = False
    return args


def run_all(out: str | Path, *, quick: bool = False, only: list[str] | None = None) -> dict[str, Any]:
    """Run every study (or those in `only`) and write out/index.html. Returns {name: entry}; a study that fails
    is reported on the page with its error, and the caller decides what a failure means."""
    from . import available_studies

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    studies = available_studies()
    unknown = sorted(set(only or []) - set(studies))
    if unknown:
        raise VitlabError(f"unknown study {', '.join(unknown)}; choose from {', '.join(studies)}")
    entries: dict[str, Any] = {}
    for name, module in studies.items():
        if only and name not in only:
            continue
        args = study_args(module, name, out, quick)
        log.info("study all: %s%s", name, " (quick)" if quick else "")
        t0 = time.perf_counter()
        try:
            results, error = module.run(args), None
        except Exception as e:           # one broken study must not hide the others' results
            results, error = {}, f"{type(e).__name__}: {e}"
            log.error("study all: %s failed: %s\n%s", name, error, traceback.format_exc())
        entries[name] = {"module": module, "results": results, "error": error, "out": Path(args.out),
                         "wall_s": time.perf_counter() - t0, "quick": quick}
    write_text(out / PAGE, render_page(entries, quick))
    summary = {name: {"wall_s": e["wall_s"], "error": e["error"], "verdicts": verdicts(e["results"])}
               for name, e in entries.items()}
    write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def claims_of(results: dict[str, Any]) -> list[dict[str, Any]]:
    """A study's claims: a list under "claims", or one under "claim" (the segmentation study's form)."""
    claims = results.get("claims")
    if isinstance(claims, list):
        return [c for c in claims if isinstance(c, dict)]
    claim = results.get("claim")
    return [claim] if isinstance(claim, dict) and "verdict" in claim else []


def verdicts(results: dict[str, Any]) -> list[str]:
    return [str(c.get("verdict")) for c in claims_of(results)]


def statement_and_paper(module: Any) -> tuple[str, str]:
    doc = (module.__doc__ or "").strip().splitlines()
    first = doc[0] if doc else module.__name__
    return getattr(module, "CLAIM", first), getattr(module, "PAPER", "see the study's docstring")


def table_rows(table: Any) -> list[dict[str, Any]]:
    """A study's table as rows of printable cells: a list of dicts, or {label: {column: value}}."""
    if isinstance(table, dict):
        table = [{"": label, **(row if isinstance(row, dict) else {"value": row})} for label, row in table.items()]
    if not isinstance(table, list):
        return []
    rows = []
    for row in table:
        if isinstance(row, dict):
            rows.append({k: v for k, v in row.items() if not isinstance(v, (list, dict)) and not k.endswith("_std")})
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def render_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p><em>no table</em></p>"
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_claims(claims: list[dict[str, Any]]) -> str:
    if not claims:
        return "<p><em>no computed verdict</em></p>"
    items = []
    for c in claims:
        se = c.get("standard_error")
        diff = c.get("difference")
        numbers = (f"difference {diff:+.4g}" if isinstance(diff, (int, float)) else "") + (
            f", 2·SE {2 * se:.4g}" if isinstance(se, (int, float)) else ", SE n/a")
        verdict = str(c.get("verdict"))
        kind = verdict.split(" ")[0] if verdict in ("reproduced", "not reproduced", "inconclusive") else "smoke"
        items.append(f"<li><span class='verdict {kind.replace(' ', '-')}'>{html.escape(verdict)}</span> "
                     f"{html.escape(str(c.get('statement', '')))} <small>({html.escape(numbers)}; "
                     f"{'paired' if c.get('paired') else 'unpaired'}, n = {html.escape(str(c.get('n')))})</small></li>")
    return "<ul class='claims'>" + "".join(items) + "</ul>"


def figures_of(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def render_figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(path.name)}'>"
            f"<figcaption>{html.escape(path.name)}</figcaption></figure>")


def render_page(entries: dict[str, Any], quick: bool) -> str:
    sections = []
    for name, e in entries.items():
        statement, paper = statement_and_paper(e["module"])
        results = e["results"]
        command = results.get("command") or f"vitlab study {name}" + (" --quick" if quick else "")
        body = (f"<p class='error'>failed: {html.escape(e['error'])}</p>" if e["error"] else
                "".join(render_figure(p) for p in figures_of(e["out"])) + render_table(table_rows(results.get("table")))
                + render_claims(claims_of(results)))
        sections.append(
            f"<section id='{html.escape(name)}'><h2>{html.escape(name)}</h2>"
            f"<p class='claim'><b>Lecture:</b> {html.escape(statement)}</p>"
            f"<p class='paper'><b>Source:</b> {html.escape(paper)}</p>{body}"
            f"<p class='command'><b>Rerun:</b> <code>{html.escape(command)}</code> "
            f"<small>({e['wall_s']:.0f} s here)</small></p></section>")
    banner = ("<p class='banner'>Quick mode: every study ran as a smoke test on tiny data. The numbers below test "
              "the code path, not the claims; no verdicts.</p>" if quick else "")
    toc = "".join(f"<li><a href='#{html.escape(n)}'>{html.escape(n)}</a> - "
                  f"{html.escape(', '.join(verdicts(e['results'])) or ('failed' if e['error'] else 'no verdict'))}"
                  f"</li>" for n, e in entries.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vitlab: the lectures' claims</title>
<style>
body {{ font-family: sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }}
section {{ border-top: 1px solid #ccc; padding-top: 1em; margin-top: 2em; }}
figure {{ margin: 0.5em 0; }} img {{ max-width: 100%; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: left; }}
.verdict {{ font-weight: bold; padding: 0 4px; border-radius: 3px; }}
.reproduced {{ background: #cfc; }} .not {{ background: #fcc; }} .inconclusive {{ background: #eee; }}
.smoke {{ background: #ffd; }} .banner {{ background: #ffd; padding: 0.5em; }} .error {{ color: #a00; }}
</style></head><body>
<h1>The lectures' claims, measured</h1>
<p>Each section: the claim as the lecture states it, the paper it comes from, our figure and table (mean ± std over
seeds), the verdict computed from the numbers (reproduced / not reproduced when the mean difference exceeds twice
its standard error, inconclusive otherwise) and the command that reruns it.</p>
{banner}<ul>{toc}</ul>
{''.join(sections)}
</body></html>
"""
