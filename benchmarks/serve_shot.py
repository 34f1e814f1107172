"""What the `vitlab serve` screenshot scripts share: the server on a free loopback port, the page in Debian's
chromium through Playwright, and the palette-quantised PNG (benchmarks/serve_*screenshot.py import it)."""
from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator

from PIL import Image
from playwright.sync_api import Page, sync_playwright


@contextlib.contextmanager
def served_page(checkpoint: str, chromium: str = "/usr/bin/chromium", height: int = 860) -> Iterator[Page]:
    """`vitlab serve --checkpoint CHECKPOINT --port 0` and a 1280 x `height` page opened on it; both stopped after."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vitlab", "serve", "--checkpoint", checkpoint, "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        match = re.match(r"vitlab serve: (http://\S+) ", line)
        if not match:
            raise SystemExit(f"vitlab serve did not start: {line!r}")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": height})
                page.goto(match.group(1))
                yield page
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(10)


def save_png(shot: bytes, out: str) -> str:
    """Save a screenshot palette-quantised (128 colours, to stay small); returns 'OUT: WxH, N KB'."""
    image = Image.open(io.BytesIO(shot)).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    image.save(out, optimize=True)
    return f"{out}: {image.size[0]}x{image.size[1]}, {os.path.getsize(out) // 1024} KB"
