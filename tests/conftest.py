"""Shared test set-up: keep W&B off the network and out of the repository, keep CPU use small.

The suite must pass on any CPU: ``OMP_NUM_THREADS=1 make test`` runs it on one thread, and
``E2ABL_TEST_FLUSH_DENORMAL=1`` with denormals flushed to zero.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

_WANDB_DIRS = ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR")


@pytest.fixture(scope="session", autouse=True)
def _isolated_wandb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point every W&B directory at a session tmp folder; W&B is disabled unless a test enables it."""
    root = tmp_path_factory.mktemp("wandb")
    saved = {key: os.environ.get(key) for key in (*_WANDB_DIRS, "WANDB_MODE")}
    for key in _WANDB_DIRS:
        folder = root / key.lower()
        folder.mkdir()
        os.environ[key] = str(folder)
    os.environ["WANDB_MODE"] = "disabled"  # a test that needs W&B sets it with monkeypatch.setenv
    # two threads like CI, unless OMP_NUM_THREADS asks for fewer (the suite must pass with 1 and 2)
    torch.set_num_threads(min(2, int(os.environ.get("OMP_NUM_THREADS") or 2)))
    if os.environ.get("E2ABL_TEST_FLUSH_DENORMAL") == "1":  # the other CPU float mode must pass too
        torch.set_flush_denormal(True)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run a test on one torch thread (small tensors: less overhead, no fight for shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
