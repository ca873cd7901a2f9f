"""Test setup: the oracle and helpers importable, deterministic seeds, a small thread count."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
if not torch.cuda.is_available():
    # The Triton kernel tests run in Triton's CPU interpreter. It must be chosen before triton is first
    # imported (importing timm does that), since triton's own library functions are built at import.
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Small models on a shared 2-core CPU run fastest and steadiest on one thread (module scope)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
