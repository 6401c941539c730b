"""The built-in methods compute exactly what they computed before the method-boundary refactor.

``tests/data/reference_metrics.json`` holds the per-epoch metrics and the results of four
short deterministic runs (supervised, pseudo_label, gradcam in both gradient modes),
recorded with the code of commit 89ce3fc (``python tests/reference_runs.py --write FILE``),
one file per processor model. On a processor and torch build with a reference the numbers
must be bit-identical. Elsewhere the test is skipped, saying how to record one: other
kernels round differently, and after a few steps of a tiny model the metrics of two
processors differ by percents (AMD EPYC vs Intel Xeon: 2.5% in the first epoch's loss), so
no tolerance separates rounding from a real change.
"""

from __future__ import annotations

import json

import pytest
import torch

from reference_runs import REFERENCES, RUNS, SINCE, cpu_name, run_all

REF = next((r for r in map(lambda p: json.loads(p.read_text()), REFERENCES)
            if r["cpu"] == cpu_name() and r["torch"] == torch.__version__), None)


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


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The four runs, two at a time (one thread each: deterministic whatever runs beside them)."""
    if REF is None:
        pytest.skip(f"no reference recorded on {cpu_name()} with torch {torch.__version__}; record one as "
                    "tests/reference_runs.py says")
    return run_all(tmp_path_factory.mktemp("reference"), SINCE)


@pytest.mark.parametrize("name", list(RUNS))
def test_metrics_match_the_pre_refactor_reference(name, runs):
    got = runs[name]
    ref = REF["runs"][name]
    expected = _flat("", ref, {})
    actual = _flat("", {"metrics": [{k: r[k] for k in e if k in r} for r, e in zip(got["metrics"], ref["metrics"])],
                        "result": got["result"]}, {})
    assert len(got["metrics"]) == len(ref["metrics"])
    missing = sorted(set(expected) - set(actual))
    assert not missing, f"metrics no longer logged: {missing}"
    diff = {k: (expected[k], actual[k]) for k in expected if expected[k] != actual[k]}
    assert not diff, f"not bit-identical: {diff}"
