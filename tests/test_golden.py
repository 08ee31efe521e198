"""Golden tests: the official-equivalent numbers of one fixed ProFD step never drift.

See ``tests/golden_reference.py`` for what is recorded and when re-recording is legitimate. Each case
compares every recorded value (eval features, visibility, SPA maps, pooled memory-init features, memory
banks after init and after one update, train outputs, every loss term, gradients of named tensors,
optimizer groups and the LR schedule) with relative tolerance ``RTOL`` = 1e-4.
"""
import pytest
import torch
from golden_reference import CASES, RTOL, golden_case, golden_path, relative_error


@pytest.fixture(scope="module")
def value_cache():
    """Golden values drawn by one case, reused by the next (they depend on name and shape alone)."""
    return {}


@pytest.mark.parametrize("case", list(CASES))
def test_golden_values_unchanged(case, value_cache):
    expected = torch.load(golden_path(case), weights_only=True)
    actual = golden_case(case, value_cache)
    assert sorted(actual) == sorted(expected), "recorded keys changed (a loss term or output added/removed)"
    errors = {key: relative_error(actual[key], expected[key]) for key in expected
              if actual[key].shape == expected[key].shape}
    shapes = [key for key in expected if actual[key].shape != expected[key].shape]
    assert not shapes, f"shapes changed: {shapes}"
    bad = {key: err for key, err in errors.items() if not err <= RTOL}
    assert not bad, f"values drifted (max rel. error > {RTOL}): {bad}"


def test_golden_values_are_not_degenerate():
    """The recorded step exercises every term: finite, non-zero losses and gradients."""
    values = torch.load(golden_path("tiny"), weights_only=True)
    losses = {k: v.item() for k, v in values.items() if k.startswith("loss.")}
    assert len(losses) == 11 and all(0 < abs(v) < 1e3 for v in losses.values()), losses
    grads = {k: v for k, v in values.items() if k.startswith("grad.") and ":" not in k}
    assert all(torch.isfinite(g).all() and g.abs().max() > 0 for g in grads.values())
    # the memory update moved the prototypes of the batch's identities (0, 1) and only those
    moved = (values["memory_step.global"] - values["memory_init.global"]).view(4, -1).abs().amax(1)
    assert (moved[:2] > 0).all() and (moved[2:] == 0).all()
