"""The captioning view in a real browser: Debian's chromium driven by Playwright against the app served in-process by
uvicorn with a tiny captioning checkpoint. Upload an image: the caption appears as clickable words; clicking a word
draws its attention over the image tokens, clicking another word draws another map. Skipped only when chromium or
playwright is absent and CI is not set."""

import numpy as np
from PIL import Image

VIRIDIS_TOP = [253, 231, 37]                          # app.js draws a map's largest cell in viridis yellow


def top_cell_is_yellow(page, attention) -> bool:
    """The map's largest cell (r, c) of the 8x8 grid (48 px cells on the 384 px overlay) is viridis yellow."""
    r, c = divmod(int(np.argmax(np.array(attention))), 8)
    pixels = np.array(page.evaluate(f"Array.from($('overlay').getContext('2d').getImageData("
                                    f"{c * 48 + 4}, {r * 48 + 4}, 40, 40).data)")).reshape(-1, 4)[:, :3]
    return bool((np.abs(pixels - VIRIDIS_TOP).max(1) <= 2).mean() > 0.5)


def test_captioning_page_words_click_and_draw(chromium, overlay_png, tiny_captioner, start_server, tmp_path):
    from playwright.sync_api import sync_playwright

    from vitlab.serve.app import create_app
    from vitlab.serve.captioning import caption_attention
    from vitlab.serve.models import load_served_models

    served = load_served_models([str(tiny_captioner)])
    image = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (60, 96, 3), dtype=np.uint8)).save(image)
    expected = caption_attention(served["cap_tiny"], image.read_bytes())
    words = expected["words"]
    assert len(words) >= 2
    errors = []
    with start_server(create_app(served, workers=1)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("body[data-status=idle][data-task=captioning]", timeout=10_000)
            # the classifier's and the detector's cards are hidden, the caption card shown
            for hidden in ("#prediction", "#multiples", "#detections-card", "#rollout", "#head"):
                assert not page.locator(hidden).is_visible(), hidden
            assert page.locator("#caption-card").is_visible()
            page.set_input_files("#file", str(image))
            page.wait_for_selector("body[data-status=ready]", timeout=10_000)
            buttons = page.locator("#caption button")
            assert buttons.all_inner_texts() == [w["word"] for w in words]
            before = overlay_png(page)

            buttons.nth(0).click()
            assert page.locator("#patch").inner_text() == f'word 1: "{words[0]["word"]}"'
            assert page.locator("#caption button.selected").count() == 1
            first = overlay_png(page)
            assert np.abs(first - before).mean() > 5, "clicking a word did not draw its attention"
            assert top_cell_is_yellow(page, words[0]["attention"])

            buttons.nth(1).click()
            assert page.locator("#patch").inner_text() == f'word 2: "{words[1]["word"]}"'
            second = overlay_png(page)
            assert np.abs(second - first).mean() > 1, "clicking another word did not change the map"
            assert top_cell_is_yellow(page, words[1]["attention"])
        finally:
            browser.close()
    assert errors == [], f"browser console errors: {errors}"
