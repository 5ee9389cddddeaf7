"""Shared fixtures: embedded real models are loaded once per test session (per xdist worker)."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smollm2():
    from sinklab.models import load

    return load("smollm2-135m")
