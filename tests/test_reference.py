"""The built-in methods compute exactly what they computed before the method-boundary refactor.

``tests/data/reference_metrics.json`` holds the per-epoch metrics and the results of four
short deterministic runs (supervised, pseudo_label, gradcam in both gradient modes),
recorded with the code of commit 89ce3fc (``python tests/reference_runs.py --write``).
On a machine with the same processor model and torch build the numbers must be
bit-identical; elsewhere float rounding of other kernels may differ, so they are compared
with a tolerance.
"""

from __future__ import annotations

import json

import pytest
import torch

from reference_runs import REFERENCE, RUNS, SINCE, cpu_name, run

REF = json.loads(REFERENCE.read_text())
SAME_MACHINE = REF["cpu"] == cpu_name() and REF["torch"] == torch.__version__


def _flat(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}", v, out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _flat(f"{prefix}[{i}]", v, out)
    else:
        out[prefix] = value
    return out


@pytest.mark.parametrize("name", list(RUNS))
def test_metrics_match_the_pre_refactor_reference(name, tmp_path):
    got = run(name, tmp_path / name, SINCE.get(name))
    ref = REF["runs"][name]
    expected = _flat("", ref, {})
    actual = _flat("", {"metrics": [{k: r[k] for k in e if k in r} for r, e in zip(got["metrics"], ref["metrics"])],
                        "result": got["result"]}, {})
    assert len(got["metrics"]) == len(ref["metrics"])
    missing = sorted(set(expected) - set(actual))
    assert not missing, f"metrics no longer logged: {missing}"
    if SAME_MACHINE:
        diff = {k: (expected[k], actual[k]) for k in expected if expected[k] != actual[k]}
        assert not diff, f"not bit-identical: {diff}"
    else:
        for k, v in expected.items():
            assert actual[k] == pytest.approx(v, rel=2e-3, abs=2e-3), k
