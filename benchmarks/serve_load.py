"""Bounded load test of `vitlab serve`: C concurrent clients x R requests each on loopback against a real uvicorn
server (`vitlab serve` as a subprocess on a free port). Asserts every response is 200; prints p50/p95 latency.

    .venv/bin/python benchmarks/serve_load.py                       # 8 x 50 POST /api/predict, tiny checkpoint
    .venv/bin/python benchmarks/serve_load.py --endpoint attention  # POST /api/attention?full=1 (what the page asks)
    .venv/bin/python benchmarks/serve_load.py --checkpoint runs/demo

Without --checkpoint it saves a fresh vit_micro_patch2_8 (digits classes, 8 px) to a temporary directory.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np


def tiny_checkpoint(directory: Path) -> Path:
    import vitlab
    from vitlab.checkpoint import save_model

    model = vitlab.create_model("vit_micro_patch2_8", num_classes=10)
    return save_model(model, directory / "tiny", classes=[str(i) for i in range(10)], data="digits", image_size=8)


def start_server(checkpoint: str) -> tuple[subprocess.Popen, str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vitlab", "serve", "--checkpoint", checkpoint, "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline().strip()
    match = re.match(r"vitlab serve: (http://127\.0\.0\.1:\d+)/ \(([^,)]+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"vitlab serve did not start: {line!r}")
    return proc, match.group(1), match.group(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50, help="per client")
    ap.add_argument("--endpoint", choices=["predict", "attention"], default="predict")
    ap.add_argument("--checkpoint", default=None)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or str(tiny_checkpoint(Path(tmp)))
        proc, url, name = start_server(checkpoint)
        try:
            with httpx.Client(base_url=url, timeout=60) as http:
                info = http.get("/api/models").json()["models"][0]
                image = http.get("/api/sample", params={"model": name, "source": "shapes"}).content
                workers = http.get("/api/health").json()["workers"]
            path = "/api/predict" if args.endpoint == "predict" else "/api/attention?full=1"
            latencies: list[float] = []
            statuses: list[int] = []
            lock = threading.Lock()

            def client() -> None:
                with httpx.Client(base_url=url, timeout=60) as http:
                    for _ in range(args.requests):
                        t = time.perf_counter()
                        r = http.post(path, files={"image": ("a.png", image, "image/png")}, data={"model": name})
                        dt = time.perf_counter() - t
                        with lock:
                            latencies.append(dt)
                            statuses.append(r.status_code)

            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            with httpx.Client(base_url=url, timeout=10) as http:
                alive = http.get("/api/health").status_code
        finally:
            proc.terminate()
            proc.wait(10)
    n = args.clients * args.requests
    bad = {s: statuses.count(s) for s in set(statuses) if s != 200}
    ms = np.array(latencies) * 1000
    print(f"vitlab serve load test: {args.clients} clients x {args.requests} requests = {n} POST {path} "
          f"({info['model']}, {info['image_size']} px; server: {workers} model threads; {os.cpu_count()} CPUs)")
    print(f"  status 200: {statuses.count(200)}/{n}{'  others: ' + str(bad) if bad else ''}; health after: {alive}")
    print(f"  latency ms: p50 {np.percentile(ms, 50):.1f}  p95 {np.percentile(ms, 95):.1f}  max {ms.max():.1f}; "
          f"wall {wall:.1f} s, {n / wall:.0f} requests/s")
    assert statuses.count(200) == n and len(statuses) == n, f"not every response was 200: {bad}"
    assert alive == 200


if __name__ == "__main__":
    main()
