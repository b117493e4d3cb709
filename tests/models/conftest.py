"""Shared fixtures for r2m.models tests."""

from __future__ import annotations

import copy

import pytest

from models_helpers import TINY_CFG


@pytest.fixture
def tiny_cfg() -> dict:
    return copy.deepcopy(TINY_CFG)


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory):
    """Root of a generated DF40-format fixture (written on first use, once per session)."""
    return tmp_path_factory.mktemp("df40_fixture")
