"""One `vitlab study all --quick` per test session: the studies' tests read its JSON and pictures instead of each
running its own smoke test (the whole run takes seconds on one thread)."""
import pytest
import torch


@pytest.fixture(scope="session")
def quick_all(tmp_path_factory):
    from vitlab.studies.course import run_all

    out = tmp_path_factory.mktemp("study-all")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_all(out, quick=True)
    finally:
        torch.set_num_threads(threads)
    return out, summary
