"""Shared test set-up: offline by default, tiny config-built models, and the GPU marker's skip."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# before torch loads OpenMP: idle threads sleep instead of spinning (2-rank tests share 2 cores)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_models import tiny_bert, tiny_gpt2, tiny_llama  # noqa: E402


def pytest_collection_modifyitems(config, items):
    # GPU tests stay collected and show up as skipped with the reason, never silently dropped.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (CI has none; run `make test` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def bert():
    return tiny_bert()


@pytest.fixture
def gpt2():
    return tiny_gpt2()
