"""One intra-op thread for these tests (train/benchmark commands): the tiny CNNs gain nothing from more, and on a shared
2-core machine extra threads make them several times slower."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
