"""The CPU thread policy: threads = cores the other processes leave free; the environment overrides it."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from vitlab import cpu_policy
from vitlab.cpu_policy import CpuPolicy
from vitlab.errors import VitlabError


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    cpu_policy._POLICY = None


@pytest.mark.parametrize("cores,others,threads", [(2, 0.0, 2), (2, 0.3, 2), (2, 1.0, 1), (2, 1.9, 1), (2, 5.0, 1),
                                                  (8, 2.0, 6), (8, 2.5, 6), (8, 2.3, 6), (8, 0.5, 8)])
def test_threads_are_the_free_cores(cores, others, threads):
    assert CpuPolicy(cores, cores).choose(others) == threads


def test_tick_changes_threads_after_two_agreeing_measurements(monkeypatch):
    policy = CpuPolicy(2, 2, interval=0.0)
    policy._last = (0.0, 0.0, 0.0, 0.0)
    loads = iter([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    monkeypatch.setattr(policy, "sample", lambda: next(loads))
    set_to = []
    monkeypatch.setattr(cpu_policy, "_set_threads", set_to.append)
    seen = []
    for _ in range(6):
        policy.tick()
        seen.append(policy.threads)
    assert seen == [2, 2, 2, 1, 1, 2]          # one odd measurement changes nothing; two in a row do
    assert set_to == [1, 2]


def test_a_busy_process_is_measured_and_leaves_a_core_free():
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        policy = CpuPolicy(len(os.sched_getaffinity(0)), 1)
        policy.sample()
        t0 = time.process_time()
        while time.process_time() - t0 < 0.3:      # this process busy too: its own time must not count
            pass
        others = policy.sample()
    finally:
        busy.kill()
        busy.wait()
    assert others is not None and others >= 0.7    # the busy loop (other jobs on the machine only add to it)
    assert policy.choose(others) <= policy.cores - 1 or policy.cores == 1


def test_environment_overrides(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("VITLAB_THREADS", "1")
    p = cpu_policy.start(window=0.0)
    assert (p.threads, p.fixed, torch.get_num_threads()) == (1, True, 1)
    monkeypatch.setenv("VITLAB_THREADS", "zero")
    with pytest.raises(VitlabError, match=r"^VITLAB_THREADS='zero': expected a whole number of threads >= 1$"):
        cpu_policy.start(window=0.0)
    monkeypatch.delenv("VITLAB_THREADS")
    monkeypatch.setenv("VITLAB_CPU_POLICY", "off")
    torch.set_num_threads(1)
    p = cpu_policy.start(window=0.0)
    assert p.fixed and p.reason == "VITLAB_CPU_POLICY=off" and p.threads == 1


def test_cli_refuses_a_bad_thread_count_in_one_line(tmp_path):
    env = {**os.environ, "VITLAB_THREADS": "-2"}
    r = subprocess.run([sys.executable, "-m", "vitlab", "models"], env=env, capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == "vitlab models: error: VITLAB_THREADS='-2': expected a whole number of threads >= 1"


def test_the_choice_is_said_once_when_training_starts_not_before_an_error(monkeypatch, caplog):
    """start() says nothing (a one-line error stays one line on a busy machine); announce() logs the note once."""
    import logging

    from vitlab import cpu_policy as cp

    policy = cp.CpuPolicy(cores=2, threads=1, note="other processes keep 1.0 of 2 cores busy: 1 torch thread")
    monkeypatch.setattr(cp, "_POLICY", policy)
    with caplog.at_level(logging.INFO, logger=cp.log.name):
        cp.announce()
        cp.announce()
    assert [r.getMessage() for r in caplog.records] == ["other processes keep 1.0 of 2 cores busy: 1 torch thread"]
