"""Fixtures shared by the experiments tests."""

from __future__ import annotations

import pytest

from ecif.experiments import distributed as D


@pytest.fixture(scope="module")
def client():
    """A 2-worker Dask LocalCluster client, one per test module, closed after it."""
    c = D.connect("local:2")
    try:
        yield c
    finally:
        D.close(c)
