from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread_torch():
    """These tests run many tiny tensor ops; on a busy 2-core machine OpenMP hand-offs
    (not arithmetic) dominated them (10-20 ms per op instead of ~20 us). One thread is
    deterministic and fast; the previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
