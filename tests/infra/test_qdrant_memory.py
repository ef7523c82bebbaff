"""Qdrant's RAM per chunk by `rag:qdrant.collection` (O10): prod's 8 GiB nodes and what each layout holds."""

from __future__ import annotations

import math

import pytest

from infra.capacity import qdrant_bytes_per_point, qdrant_points_in_memory

PROD = {"nodes": 3, "replication_factor": 2}  # Pulumi.prod.yaml
GIB = 2**30
DIM = 384  # BAAI/bge-small-en-v1.5, the default model


@pytest.mark.parametrize(
    ("on_disk", "quantization", "millions"),
    [
        (False, "none", 5.6),  # today: the "~5 M chunks" of the last stop
        (False, "int8", 4.5),  # quantization alone ADDS the int8 copy: fewer
        (True, "int8", 22.4),  # int8 in RAM, floats memory-mapped: 4x
    ],
)
def test_what_prods_8gib_nodes_hold_per_layout(on_disk: bool, quantization: str, millions: float) -> None:
    held = qdrant_points_in_memory(8 * GIB, DIM, vectors_on_disk=on_disk, quantization=quantization, **PROD)
    assert held / 1e6 == pytest.approx(millions, rel=0.01)


def test_floats_on_disk_without_quantization_need_no_pinned_ram() -> None:
    assert qdrant_bytes_per_point(DIM, vectors_on_disk=True, quantization="none") == 0
    assert math.isinf(qdrant_points_in_memory(GIB, DIM, vectors_on_disk=True, quantization="none", **PROD))
    assert qdrant_bytes_per_point(DIM, vectors_on_disk=False, quantization="none") == DIM * 4 * 1.5
