"""A screenshot of the `vitlab serve` captioning view: a scene's caption as words, one word clicked and its attention
drawn over the image tokens (docs/serve_captioning.png).

    .venv/bin/python benchmarks/serve_captioning_screenshot.py --checkpoint runs/captioning_vit --scene 1 --word 3 \
        --out docs/serve_captioning.png

Starts `vitlab serve` on a free loopback port, opens the page in Debian's chromium through Playwright, presses
"scenes sample" until generated scene --scene is shown (the page's samples count from 0), clicks the --word-th word
of the caption (0: the first), and saves a full-page PNG (palette-quantised to stay small).
"""
from __future__ import annotations

import argparse

from playwright.sync_api import expect
from serve_shot import save_png, served_page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a captioning checkpoint (run directory)")
    ap.add_argument("--scene", type=int, default=1, help="which generated scenes sample to show")
    ap.add_argument("--word", type=int, default=3, help="which word of the caption to click (0: the first)")
    ap.add_argument("--out", default="docs/serve_captioning.png")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()

    with served_page(args.checkpoint, args.chromium, height=560) as page:
        page.wait_for_selector("body[data-status=idle][data-task=captioning]")
        for i in range(args.scene + 1):            # "ready" stays set until the next sample's request is back
            page.click("#scenes")
            expect(page.locator("#source")).to_contain_text(f"scenes sample #{i} ")
            page.wait_for_selector("body[data-status=ready]")
        words = page.locator("#caption button")
        words.nth(min(args.word, words.count() - 1)).click()
        shot = page.screenshot(full_page=True)
        caption = words.all_inner_texts()
        source = page.locator("#source").inner_text()
    print(f"{save_png(shot, args.out)}; {source}; caption: {' '.join(caption)}; "
          f"clicked: {caption[min(args.word, len(caption) - 1)]!r}")


if __name__ == "__main__":
    main()
