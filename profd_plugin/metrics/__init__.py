"""Test-time matching: the visibility-aware distance (ProFD Eq. 14) and a vectorised ranking evaluator.

* ``distance.py``: :func:`visibility_aware_distance`, the paper's Eq. 14 (global + visibility-weighted part
  distances of L2-normalised features; ``metric="euclidean"`` as in the official code, ``"cosine"`` as
  printed).
* ``rank.py``: :func:`evaluate_rank`, torchreid's Market-1501 protocol (CMC and mAP bit-identical to
  torchreid's Python evaluator, computed on blocks of query rows), and
  :func:`evaluate_rank_host_compatible`, the same with torchreid's signature (installed by ``host.py``).

Data flows features -> distance -> ranking; timings are in ``docs/PERFORMANCE.md``.
"""
# The distance's accepted metrics and modes stay importable from the package (the single-file module had
# them); the ranking internals are tested from .rank, where they live.
from .distance import DIST_METRICS, DIST_MODES, visibility_aware_distance  # noqa: F401
from .rank import evaluate_rank, evaluate_rank_host_compatible

__all__ = ["visibility_aware_distance", "evaluate_rank", "evaluate_rank_host_compatible"]
