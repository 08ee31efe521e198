"""The suite's own scheduling (tests/conftest.py): what it relies on stays true."""
import os

import conftest
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def test_long_modules_exist():
    """A renamed module would silently lose its place at the front of the queue."""
    missing = [m for m in conftest.LONG_MODULES if not os.path.exists(os.path.join(HERE, m + ".py"))]
    assert not missing and len(set(conftest.LONG_MODULES)) == len(conftest.LONG_MODULES)


def test_auto_workers_follow_the_usable_cpus(monkeypatch):
    for cpus, workers in ((1, 1), (2, 2), (3, 3), (16, conftest.MAX_WORKERS)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)), raising=False)
        assert conftest.pytest_xdist_auto_num_workers(None) == workers


def test_a_worker_computes_with_one_thread():
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("run in one process (-n 0): torch keeps its default threads")
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"


def test_long_modules_come_first_and_modules_stay_together(request):
    order = [item.module.__name__ for item in request.session.items]
    firsts = list(dict.fromkeys(order))  # module order
    assert sum(1 for a, b in zip(order, order[1:]) if a != b) == len(firsts) - 1  # each module contiguous
    present = [m for m in conftest.LONG_MODULES if m in firsts]
    assert firsts[:len(present)] == present
