"""Fixtures for the merge-library tests (inputs are generated, never downloaded)."""

from __future__ import annotations

import pytest
import torch
from merge_fixtures import make_specialists, tiny_base


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to oversubscription on busy CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base():
    return tiny_base()


@pytest.fixture(scope="module")
def specs(base):
    return make_specialists(base, 3)


@pytest.fixture(scope="module")
def base64(base):
    return {k: v.double() for k, v in base.items()}


@pytest.fixture(scope="module")
def specs64(specs):
    return [{k: v.double() for k, v in s.items()} for s in specs]
