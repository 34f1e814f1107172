import os
from pathlib import Path

import pytest
import torch

CHROMIUM = os.environ.get("VITLAB_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Debian's chromium for Playwright (its own browser download cannot run here). Skips where
    playwright or chromium is missing, except under CI (CI=1), where the browser tests must run."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "playwright is not installed"
    else:
        missing = "" if Path(CHROMIUM).exists() else f"chromium is missing at {CHROMIUM}"
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI: {missing} (.ci/run installs chromium with apt-get; playwright is in the dev extra)")
    if missing:
        pytest.skip(f"{missing} (set CI=1 to make this a failure)")
    return CHROMIUM


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread for every test: the models under test are tiny, so one thread is as fast, and a busy
    2-core machine (CI, parallel runs) does not stall on oversubscribed OpenMP threads (measured: the training
    tests take 40 s this way and 440 s with 2 threads beside another busy process)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fit_batch(model, x, y, steps=10, lr=3e-3):
    """Adam on one batch for `steps` steps. Returns the losses and the gradients of the first step by name (a
    parameter that got none is missing from the dict)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses, first_grads = [], {}
    for step in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            first_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
        losses.append(loss.item())
    return losses, first_grads


@pytest.fixture
def fit_batch():
    return _fit_batch
