"""The page in a real browser: Debian's chromium (/usr/bin/chromium) driven by Playwright, against `vitlab serve`
started as a subprocess on a free loopback port with a tiny trained checkpoint. Skipped only when chromium or
playwright is absent and CI is not set; under CI it must run."""
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

@pytest.fixture
def server(tiny_run, tmp_path):
    """`vitlab serve --checkpoint RUN --port 0` as a subprocess; yields its printed base URL."""
    env = {**os.environ, "VITLAB_CPU_POLICY": "off", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "vitlab", "serve", "--checkpoint", str(tiny_run), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        line = proc.stdout.readline()                 # the address line, printed once the socket is bound
        match = re.match(r"vitlab serve: (http://127\.0\.0\.1:\d+/) \(digits_tiny\); Ctrl-C stops$", line.strip())
        log.seek(0)
        assert match, f"unexpected first line {line!r}; stderr: {log.read()}"
        yield match.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_page_upload_hover_and_layer_switch(chromium, overlay_png, server, tmp_path):
    from playwright.sync_api import sync_playwright

    from vitlab.data import build_data
    from vitlab.serve.models import png_bytes

    image = tmp_path / "digit.png"
    image.write_bytes(png_bytes(build_data("digits", 8).val.images[0]))
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server)
            page.wait_for_selector("body[data-status=idle]", timeout=10_000)
            assert page.locator("#model option").all_inner_texts() == ["digits_tiny (vit_micro_patch2_8)"]
            page.set_input_files("#file", str(image))
            page.wait_for_selector("body[data-status=ready]", timeout=10_000)
            rows = page.locator("#prediction li").all_inner_texts()
            assert len(rows) == 5 and all(re.fullmatch(r"\d \d+\.\d%", r.strip()) for r in rows), rows
            assert page.locator("#multiples canvas").count() == 2 * 4       # layers x heads small multiples

            before = overlay_png(page)
            box = page.locator("#overlay").bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.4)   # patch row 2, col 3
            assert page.locator("#patch").inner_text() == "patch row 2, col 3"
            hovered = overlay_png(page)
            assert np.abs(hovered - before).mean() > 5, "hovering a patch did not change the overlay"
            # the brightest cell is the argmax of that patch's attention row (last layer, mean over heads)
            row = page.evaluate("attentionRow(Number($('layer').value), -1, 6)")
            cell = int(np.argmax(row))
            pixel = page.evaluate(f"Array.from($('overlay').getContext('2d').getImageData("
                                  f"{(cell % 4) * 96 + 48}, {(cell // 4) * 96 + 48}, 1, 1).data)")
            assert abs(pixel[0] - 253) <= 2 and abs(pixel[1] - 231) <= 2 and abs(pixel[2] - 37) <= 2, (cell, pixel)

            page.select_option("#layer", "0")
            first_layer = overlay_png(page)
            assert np.abs(first_layer - hovered).mean() > 1, "switching the layer did not change the overlay"
            page.select_option("#head", "2")
            assert np.abs(overlay_png(page) - first_layer).mean() > 1, "switching the head did not change it"
            page.select_option("#fusion", "max")                            # rollout control: one round trip
            page.wait_for_load_state("networkidle")
            page.locator("#overlay").click(position={"x": 10, "y": 10})     # pin patch (1, 1): PE similarity
            assert "patch (1, 1)" in page.locator("#posembed-note").inner_text()
            time.sleep(0.1)
        finally:
            browser.close()
    assert errors == [], f"browser console errors: {errors}"
