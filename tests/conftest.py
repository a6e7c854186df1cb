"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` relative to the project root (public example catalogs and images).

    Tests that need it skip when it is absent, except under ``CI=true``, where they fail: CI must
    run them.
    """
    if not SHARED_DATA.is_dir():
        message = f"shared test data not found at {SHARED_DATA} (see ../shared/data/README.md)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI=true requires it")
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: tiny networks gain nothing from threads, and on a
    shared 2-core machine spinning threads slow small tensors down many times over."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
