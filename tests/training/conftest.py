"""Training tests run with one intra-op thread, restored after each test.

On a busy 2-core machine two OpenMP threads spin against each other: a 4-step run of the tiny model took
10 s with 2 threads and 0.6 s with 1, and the real-model check dropped from minutes to seconds per step.
One thread keeps every file well inside its time budget whatever else the machine is doing.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
