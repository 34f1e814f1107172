"""The detection view in a real browser: Debian's chromium driven by Playwright against the app served in-process by
uvicorn (no subprocess start: this case stays a few seconds) with a tiny DETR checkpoint. Upload an image, see the
boxes, click one: its query's cross-attention is drawn; switch the head; move the threshold. Skipped only when
chromium or playwright is absent and CI is not set."""

import numpy as np
from PIL import Image

def smallest_box_at(detections, x, y, image_size, side=384):
    """The JS rule (detectionAt): of the boxes holding canvas point (x, y), the smallest."""
    H, W = image_size
    best, best_area = None, float("inf")
    for i, d in enumerate(detections):
        x0, y0, x1, y1 = (d["box_xyxy"][0] * side / W, d["box_xyxy"][1] * side / H, d["box_xyxy"][2] * side / W,
                          d["box_xyxy"][3] * side / H)
        if x0 <= x <= x1 and y0 <= y <= y1 and (x1 - x0) * (y1 - y0) < best_area:
            best, best_area = i, (x1 - x0) * (y1 - y0)
    return best


def test_detection_page_boxes_click_and_head(chromium, overlay_png, tiny_detr, start_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from vitlab.serve.app import create_app
    from vitlab.serve.detection import detection_attention
    from vitlab.serve.models import load_served_models

    served = load_served_models([str(tiny_detr)])
    image = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (60, 96, 3), dtype=np.uint8)).save(image)
    expected = detection_attention(served["detr_tiny"], image.read_bytes(), 0.5)
    found = expected["detections"]
    assert 0 < len(found) < 10
    errors = []
    with start_server(create_app(served, workers=1)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("body[data-status=idle][data-task=detection]", timeout=10_000)
            assert not page.locator("#prediction").is_visible() and not page.locator("#multiples").is_visible()
            page.set_input_files("#file", str(image))
            page.wait_for_selector("body[data-status=ready]", timeout=10_000)
            rows = page.locator("#detections li").all_inner_texts()
            assert rows == [f"{d['class']} {100 * d['score']:.1f}% (query {d['query']})" for d in found]
            boxes_only = overlay_png(page)

            # click the centre of the best box: the smallest box there is selected, its map drawn
            x0, y0, x1, y1 = found[0]["box_xyxy"]
            cx, cy = (x0 + x1) / 2 * 384 / 96, (y0 + y1) / 2 * 384 / 60
            chosen = found[smallest_box_at(found, cx, cy, (60, 96))]
            page.locator("#overlay").click(position={"x": cx, "y": cy})
            assert page.locator("#patch").inner_text() == f"query {chosen['query']}: {chosen['class']} " \
                                                          f"{chosen['score']:.2f}"
            assert page.locator("#detections li.selected").inner_text().endswith(f"(query {chosen['query']})")
            mean_map = overlay_png(page)
            assert np.abs(mean_map - boxes_only).mean() > 5, "clicking a box did not draw its attention"
            # the map's largest cell is drawn at the top of the colour scale (viridis yellow) on the overlay
            cell = int(np.argmax(np.array(chosen["attention"])))
            r, c = divmod(cell, 8)
            pixels = np.array(page.evaluate(f"Array.from($('overlay').getContext('2d').getImageData("
                                            f"{c * 48 + 4}, {r * 48 + 4}, 40, 40).data)")).reshape(-1, 4)[:, :3]
            assert (np.abs(pixels - [253, 231, 37]).max(1) <= 2).mean() > 0.5, (cell, np.median(pixels, 0))

            page.select_option("#head", "1")
            assert np.abs(overlay_png(page) - mean_map).mean() > 1, "switching the head did not change the map"
            page.locator("#detections li").nth(len(found) - 1).click()
            assert page.locator("#patch").inner_text().startswith(f"query {found[-1]['query']}: ")

            page.locator("#threshold").fill("0")                       # every query, after one round trip
            expect(page.locator("#detections li")).to_have_count(10, timeout=10_000)   # (the CSP forbids eval)
            page.wait_for_selector("body[data-status=ready]", timeout=10_000)
            # the selected query is still detected at 0: it stays selected
            assert page.locator("#patch").inner_text().startswith(f"query {found[-1]['query']}: ")
        finally:
            browser.close()
    assert errors == [], f"browser console errors: {errors}"
