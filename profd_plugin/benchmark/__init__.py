"""Benchmark comparison: ProFD against torchreid built-ins on the same data and protocol, one table.

``tools/benchmark.py`` is the command line over :func:`run_benchmark`. Modules: :mod:`.plan` (the configs
of every run, per-model options), :mod:`.execute` (one run: reuse, resume or start; ablation
evaluations), :mod:`.measure` (parameters, inference throughput, peak memory), :mod:`.report`
(aggregation over seeds, ``benchmark.md`` / ``.csv`` / ``.json``).
"""
from .execute import RUN_FILE, RunRecord
from .plan import BASELINE_DEFAULTS, BASELINES, SHARED_KEYS
from .report import ROW_KEYS
from .run import ablation_name, run_benchmark

__all__ = ["run_benchmark", "ablation_name", "RUN_FILE", "RunRecord", "ROW_KEYS", "BASELINES",
           "BASELINE_DEFAULTS", "SHARED_KEYS"]
