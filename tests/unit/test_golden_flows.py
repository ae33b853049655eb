"""The golden flow tables in flows/golden are what the pipeline builds today.

A failure here means the flows changed: if intended, regenerate with
`python -m xvif_ovs.pipeline.scenarios flows/golden` and review the diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from xvif_ovs.pipeline.scenarios import SCENARIOS

GOLDEN = Path(__file__).resolve().parents[2] / "flows" / "golden"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_golden(name):
    assert SCENARIOS[name]() == (GOLDEN / f"{name}.flows").read_text()
