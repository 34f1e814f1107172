"""A screenshot of the `vitlab serve` page after an image is loaded and a patch hovered (docs/serve.png).

    .venv/bin/python benchmarks/serve_screenshot.py --checkpoint runs/serve_shapes_micro32 --out docs/serve.png

Starts `vitlab serve` on a free loopback port, opens the page in Debian's chromium through Playwright, picks a
generated shapes sample (or --image FILE), hovers the patch at --hover (fractions of the image), pins it for the
position-embedding view, and saves a full-page PNG (palette-quantised to stay small).
"""
from __future__ import annotations

import argparse

from serve_shot import save_png, served_page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--image", default=None, help="an image file (default: a generated shapes sample)")
    ap.add_argument("--hover", default="0.5,0.5", help="x,y of the hovered patch as fractions of the image")
    ap.add_argument("--sample-clicks", type=int, default=1, help="how many times to press 'shapes sample'")
    ap.add_argument("--out", default="docs/serve.png")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    hx, hy = (float(v) for v in args.hover.split(","))

    with served_page(args.checkpoint, args.chromium, height=860) as page:
        page.wait_for_selector("body[data-status=idle]")
        if args.image:
            page.set_input_files("#file", args.image)
        else:
            for _ in range(args.sample_clicks):
                page.click("#shapes")
                page.wait_for_selector("body[data-status=ready]")
        page.wait_for_selector("body[data-status=ready]")
        box = page.locator("#overlay").bounding_box()
        x, y = box["x"] + box["width"] * hx, box["y"] + box["height"] * hy
        page.mouse.click(x, y)                                 # pin: position-embedding similarity
        page.mouse.move(x, y)
        shot = page.screenshot(full_page=True)
    print(save_png(shot, args.out))


if __name__ == "__main__":
    main()
