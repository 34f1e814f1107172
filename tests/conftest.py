import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models run faster without thread hand-offs, and parallel test runs on a shared
    2-core machine do not oversubscribe it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
