"""Training speed on cores shared with other jobs: `vitlab train` quiet and beside busy-loop processes, under
several CPU thread policies, interleaved so that drifting background load hits every policy alike.

    python benchmarks/shared_cores.py                       # auto (the default) vs off (torch's own defaults)
    python benchmarks/shared_cores.py --policies auto off passive --busy 1 --repeats 3 --epochs 4
    python benchmarks/shared_cores.py --readme              # also rewrite the table in docs/performance.md

A policy is a set of environment variables for the `vitlab` process: `auto` is vitlab's default (see
vitlab/cpu_policy.py), `off` is VITLAB_CPU_POLICY=off (OpenMP's and torch's defaults, as before the policy
existed), `passive` is OMP_WAIT_POLICY=PASSIVE with the thread count left alone, `one` one thread.
Speed is the median images/s of the epochs after the first (the first includes warm-up costs).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLICIES: dict[str, dict[str, str]] = {
    "auto": {},
    "off": {"VITLAB_CPU_POLICY": "off"},
    "passive": {"VITLAB_CPU_POLICY": "off", "OMP_WAIT_POLICY": "PASSIVE"},
    "one": {"VITLAB_CPU_POLICY": "off", "OMP_NUM_THREADS": "1"},
    "spin10k": {"VITLAB_CPU_POLICY": "off", "GOMP_SPINCOUNT": "10000"},
    "spin1k": {"VITLAB_CPU_POLICY": "off", "GOMP_SPINCOUNT": "1000"},
}
CLEARED = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VITLAB_CPU_POLICY",
           "VITLAB_THREADS")


def vitlab_exe() -> str:
    exe = Path(sys.executable).with_name("vitlab")
    return str(exe) if exe.exists() else "vitlab"


def train_speed(policy: str, epochs: int, extra: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(POLICIES[policy])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        subprocess.run([vitlab_exe(), "train", "--epochs", str(epochs), "--out", str(out), *extra], env=env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out / "metrics.csv") as f:
            speeds = [float(row["images_per_s"]) for row in csv.DictReader(f)]
    return statistics.median(speeds[1:] or speeds)


def busy_processes(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def measure(policies: list[str], busy: int, repeats: int, epochs: int, extra: list[str]) -> dict:
    runs: dict[str, dict[str, list[float]]] = {p: {"quiet": [], "busy": []} for p in policies}
    for r in range(repeats):
        for condition in ("quiet", "busy"):
            for policy in policies:
                procs = busy_processes(busy) if condition == "busy" else []
                try:
                    time.sleep(0.5 if procs else 0.0)
                    speed = train_speed(policy, epochs, extra)
                finally:
                    for p in procs:
                        p.kill()
                        p.wait()
                runs[policy][condition].append(speed)
                print(f"repeat {r + 1}/{repeats}  {condition:5s}  {policy:8s} {speed:8.0f} images/s", flush=True)
    load = os.getloadavg()
    return {"policies": policies, "busy_processes": busy, "repeats": repeats, "epochs": epochs,
            "train_args": extra, "cpus": len(os.sched_getaffinity(0)), "loadavg_at_end": load, "runs": runs}


def table(result: dict) -> str:
    base = statistics.median(result["runs"]["off"]["quiet"]) if "off" in result["runs"] else None
    busy = result["busy_processes"]
    lines = [f"| policy | quiet images/s | beside {busy} busy process(es) | busy / quiet | quiet vs `off` |",
             "|---|---:|---:|---:|---:|"]
    for policy in result["policies"]:
        q = statistics.median(result["runs"][policy]["quiet"])
        b = statistics.median(result["runs"][policy]["busy"])
        vs = f"{q / base:.2f}x" if base else "-"
        lines.append(f"| {policy} | {q:.0f} | {b:.0f} | {b / q:.0%} | {vs} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", nargs="+", default=["auto", "off"], choices=sorted(POLICIES))
    p.add_argument("--busy", type=int, default=1, help="busy-loop processes beside the run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-args", default="", help="extra `vitlab train` arguments, e.g. '--data shapes'")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/shared_cores.json")
    args = p.parse_args()
    result = measure(args.policies, args.busy, args.repeats, args.epochs, args.train_args.split())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
