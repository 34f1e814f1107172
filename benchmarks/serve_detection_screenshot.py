"""A screenshot of the `vitlab serve` detection view: boxes on a scene, one box clicked (docs/serve_detection.png).

    .venv/bin/python benchmarks/serve_detection_screenshot.py --checkpoint runs/dab_detr_scenes --scene 1 \
        --out docs/serve_detection.png

Starts `vitlab serve` on a free loopback port, opens the page in Debian's chromium through Playwright, presses
"scenes sample" until generated scene --scene is shown (the page's samples count from 0), clicks the centre of the
--box-th box in its list (0: the best), and saves a full-page PNG (palette-quantised to stay small).
"""
from __future__ import annotations

import argparse

from serve_shot import save_png, served_page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a detection checkpoint (DETR, DAB-DETR)")
    ap.add_argument("--scene", type=int, default=1, help="which generated scenes sample to show")
    ap.add_argument("--box", type=int, default=0, help="which box of the list to click (0: the best)")
    ap.add_argument("--head", default="-1", help="the head to show (-1: the mean over heads)")
    ap.add_argument("--out", default="docs/serve_detection.png")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()

    with served_page(args.checkpoint, args.chromium, height=620) as page:
        page.wait_for_selector("body[data-status=idle][data-task=detection]")
        for _ in range(args.scene + 1):
            page.click("#scenes")
            page.wait_for_selector("body[data-status=ready]")
        page.locator("#detections li").nth(args.box).click()
        page.select_option("#head", args.head)
        shot = page.screenshot(full_page=True)
        listed = page.locator("#detections li").all_inner_texts()
    print(f"{save_png(shot, args.out)}; boxes: {listed}")


if __name__ == "__main__":
    main()
