"""keep_freed_memory: the glibc setting must really stop freed blocks from being faulted in again, and must
stay out of the way when the user chose otherwise. Each case runs in a fresh interpreter: the setting is
process-wide and cannot be undone."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the setting is glibc-specific")

PROBE = """
import json, resource, sys
import torch
from vitlab.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "1" else False
torch.manual_seed(0)
x, w = torch.randn(4096, 512), torch.randn(2048, 512)
def step():                                      # an MLP forward: 32 MiB and 8 MiB activations, freed at the end
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        (torch.nn.functional.gelu(x @ w.T) @ w).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
for _ in range(3):                               # the heap grows to its peak
    step()
print(json.dumps({"applied": applied, "faults": step()}))
"""


def probe(apply: bool, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "VITLAB_MALLOC"}
    out = subprocess.run([sys.executable, "-c", PROBE, "1" if apply else "0"], env={**clean, **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_memory_is_reused_instead_of_faulted_in_again():
    pages = 4 * (2 * 32 + 8) * 2 ** 20 // 4096           # pages one step writes (matmul and GELU outputs)
    default, kept = probe(False), probe(True)
    assert kept["applied"] is True
    assert default["faults"] > pages // 2                 # glibc unmaps 64 MiB blocks on free: every page faults
    assert kept["faults"] < pages // 50                   # reused: (almost) no page faults


@pytest.mark.parametrize("env", [{"VITLAB_MALLOC": "default"}, {"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_user_choice_is_left_alone(env):
    assert probe(True, **env)["applied"] is False


def test_the_command_applies_it(monkeypatch):
    import vitlab.runtime
    from vitlab.cli import main

    calls = []
    monkeypatch.setattr(vitlab.runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    assert main(["models", "vit_tiny_patch16_224"]) == 0
    assert calls == [1]
