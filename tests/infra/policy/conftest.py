"""Fixtures for the policy tests (builders live in ``policy_builders``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from policy_builders import record

from infra.offline import RecordedResource


@pytest.fixture
def k8s() -> Callable[..., RecordedResource]:
    """``k8s(manifest, protect=False)``: record a manifest under its Kubernetes type token."""
    return record
