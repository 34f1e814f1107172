import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread for every test: the models under test are tiny, so one thread is as fast, and a busy
    2-core machine (CI, parallel runs) does not stall on oversubscribed OpenMP threads (measured: the training
    tests take 40 s this way and 440 s with 2 threads beside another busy process)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
