"""CPU threads on cores shared with other jobs: as many torch threads as there are cores the other processes leave
free, chosen at start and re-chosen while training when the load changes. Applied by the `vitlab` command (never
on `import vitlab`); the override knob is the environment:

    VITLAB_CPU_POLICY=off     torch's and OpenMP's defaults (one thread per core, OpenMP's spin-then-sleep wait)
    VITLAB_THREADS=N          exactly N threads, never changed
    OMP_NUM_THREADS=N         respected as given (also disables the policy)

Why: PyTorch's CPU kernels run on an OpenMP pool with one thread per core. When another process keeps a core busy,
one of our threads shares that core, and every parallel region waits at its barrier for the thread that is
descheduled, while the others spin-wait on their cores: with one busy-loop process beside it, `make demo`'s training
ran at 23% of its quiet speed (benchmarks/shared_cores.py). OMP_WAIT_POLICY=PASSIVE stops the spinning (155% of
that) but makes every quiet barrier a sleep and a wake-up: quiet training at 0.43x. Not oversubscribing serves
both: one thread beside one busy process trains at ~75% of the quiet two-thread speed, and quiet runs keep all
cores with OpenMP's default waits. The figures are in docs/performance.md.

How the free cores are measured: /proc/stat's busy time of the cores this process may run on, minus this process's
own CPU time (/proc/self/stat), over a short window (0.2 s at start, then every `interval` seconds of training).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

START_WINDOW_S = 0.2        # sampling window at start (the cost of the policy to every command)
INTERVAL_S = 5.0            # re-measure at most this often while training
FREE_THRESHOLD = 0.6        # a core counts as free when others use less than 40% of it


def _cpu_ticks(cpus: set[int]) -> tuple[float, float] | None:
    """(busy, total) clock ticks summed over `cpus` from /proc/stat, or None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        ticks = [float(v) for v in values[:8]]          # user nice system idle iowait irq softirq steal
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None


def _own_ticks() -> float:
    """This process's user + system CPU time, in clock ticks (all its threads)."""
    t = os.times()
    return (t.user + t.system) * os.sysconf("SC_CLK_TCK")


@dataclass
class CpuPolicy:
    """The thread count for this process: `cores` it may use, `threads` chosen, `fixed` when the user chose."""

    cores: int
    threads: int
    fixed: bool = False
    reason: str = ""
    interval: float = INTERVAL_S
    _last: tuple[float, float, float, float] | None = field(default=None, repr=False)   # wall, busy, total, own
    _pending: int | None = field(default=None, repr=False)
    note: str | None = field(default=None, repr=False)   # why fewer threads than cores, for announce()

    def sample(self) -> float | None:
        """Cores kept busy by other processes since the last sample (None on the first call or without /proc)."""
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(self.cores))
        ticks = _cpu_ticks(cpus)
        if ticks is None:
            return None
        now = (time.monotonic(), ticks[0], ticks[1], _own_ticks())
        last, self._last = self._last, now
        if last is None or now[2] <= last[2]:
            return None
        busy, total, own = now[1] - last[1], now[2] - last[2], now[3] - last[3]
        return max(0.0, (busy - own) / total * len(cpus))

    def choose(self, others: float) -> int:
        """Threads for `others` busy cores: the cores left free, at least one."""
        return max(1, min(self.cores, int(self.cores - others + FREE_THRESHOLD)))

    def tick(self) -> None:
        """Call from the main thread between steps (OpenMP's thread count is per calling thread): re-measures at
        most every `interval` seconds and changes the thread count after two measurements agree."""
        if self.fixed or self._last is None or time.monotonic() - self._last[0] < self.interval:
            return
        others = self.sample()
        if others is None:
            return
        target = self.choose(others)
        if target == self.threads:
            self._pending = None
        elif self._pending == target:
            log.debug("cpu policy: other processes use %.1f of %d cores: %d -> %d threads", others, self.cores,
                      self.threads, target)
            self.threads, self._pending = target, None
            _set_threads(target)
        else:
            self._pending = target


_POLICY: CpuPolicy | None = None


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def start(window: float = START_WINDOW_S) -> CpuPolicy:
    """Choose this process's torch thread count from the environment or from the load the machine has now.
    Says nothing (a one-line answer or error stays one line); `announce` says the choice when training starts."""
    global _POLICY
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = os.environ
    if env.get("VITLAB_THREADS"):
        n = _positive_int(env["VITLAB_THREADS"], "VITLAB_THREADS")
        _POLICY = CpuPolicy(cores, n, fixed=True, reason="VITLAB_THREADS")
        _set_threads(n)
    elif env.get("VITLAB_CPU_POLICY", "auto").lower() in ("off", "0", "none") or env.get("OMP_NUM_THREADS"):
        import torch

        why = "OMP_NUM_THREADS" if env.get("OMP_NUM_THREADS") else "VITLAB_CPU_POLICY=off"
        _POLICY = CpuPolicy(cores, torch.get_num_threads(), fixed=True, reason=why)
    else:
        policy = CpuPolicy(cores, cores, reason="auto")
        policy.sample()
        time.sleep(window)
        others = policy.sample()
        policy.threads = policy.choose(others) if others is not None else cores
        _set_threads(policy.threads)
        if policy.threads < cores:
            policy.note = (f"other processes keep {others:.1f} of {cores} cores busy: {policy.threads} torch "
                           f"thread{'s' if policy.threads > 1 else ''} (VITLAB_CPU_POLICY=off for torch's default)")
            log.debug(policy.note)
        _POLICY = policy
    return _POLICY


def announce() -> None:
    """Log, once, why this process runs fewer threads than cores (the trainer calls it when training starts)."""
    if _POLICY is not None and _POLICY.note:
        log.info(_POLICY.note)
        _POLICY.note = None


def tick() -> None:
    """Re-check the load (see CpuPolicy.tick); nothing when the policy was not started (library use)."""
    if _POLICY is not None:
        _POLICY.tick()


def current() -> CpuPolicy | None:
    return _POLICY


def _positive_int(text: str, name: str) -> int:
    from .errors import VitlabError

    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise VitlabError(f"{name}={text!r}: expected a whole number of threads >= 1")
    return n
