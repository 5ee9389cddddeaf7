"""Shared fixtures: embedded real models are loaded once per test session (per xdist worker)."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """`make test` runs two xdist workers on two cores: one torch thread each avoids oversubscription stalls."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smollm2():
    from sinklab.models import load

    return load("smollm2-135m")
