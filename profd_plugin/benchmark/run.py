"""``run_benchmark``: every model on the same data, split, augmentation and epochs; one table.

The order is the order of ``--models``; for each model its seeds, and after ProFD's training runs its
ablation rows (:data:`~profd_plugin.benchmark.plan.ABLATION_DISTANCES`, evaluation-only runs on its own
final checkpoint). Every config is built before the first run, so a bad option stops before anything
trains. The table files are rewritten after every row, so a benchmark interrupted later still has the
rows it finished.
"""
from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..errors import ConfigError
from .execute import eval_run, final_checkpoint, train_run
from .plan import ABLATION_DISTANCES, PROFD, RunSpec, choose_target, plan_runs
from .report import aggregate, format_markdown, write_tables

__all__ = ["run_benchmark", "ablation_name"]


def ablation_name(distance: str) -> str:
    """Table row of ProFD evaluated with ``profd.test.distance distance``."""
    return f"{PROFD}[{distance}]"


def _header(argv: Sequence[str], target: str, specs: List[RunSpec]) -> str:
    cfg = specs[0].cfg
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return "\n".join([
        "# Benchmark", "",
        f"Command: `{' '.join(shlex.quote(a) for a in argv)}`", "",
        f"Target: `{target}` (R1 / mAP in %; mean ± sample std over seeds when runs > 1). Train on "
        f"{list(cfg.data.sources)}, train.max_epoch {cfg.train.max_epoch}, batch {cfg.train.batch_size}, "
        f"{cfg.data.height}x{cfg.data.width}, seeds {sorted({s.seed for s in specs})}.", "",
        f"Machine: {device}, torch {torch.__version__}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Efficiency columns of reused runs are those measured when they "
        "ran; ablation rows share ProFD's training and weights.",
    ])


def _row(records: List[Any]) -> List[Dict[str, Any]]:
    return [{"results": r.results, "metrics": r.metrics, "run_dir": r.run_dir} for r in records]


def _check_single_process() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("tools/benchmark.py runs in one process: start it with python, not torchrun")


def run_benchmark(config_file: str, models: Sequence[str], opts: Sequence[str], *, output: str,
                  seeds: int = 1, target: str = "", argv: Optional[Sequence[str]] = None
                  ) -> Dict[str, Dict[str, Any]]:
    """Train and evaluate every model, write ``benchmark.{md,csv,json}`` into ``output``; return the table.

    Args:
        config_file: the shared YAML config (data, split, augmentation, schedule).
        models: ``profd`` and/or torchreid built-in names.
        opts: ``key value`` pairs, ``<model>:key`` / ``baselines:key`` for one model or every baseline
            (see :mod:`profd_plugin.benchmark.plan`).
        output: the benchmark folder (run folders and tables).
        seeds: runs per model (``train.seed``, ``train.seed + 1``, ...).
        target: the dataset of the table (default: the last of ``data.targets``).
        argv: the command line, for the table header.

    Raises:
        ConfigError: bad models, options or target, before anything runs.
    """
    _check_single_process()
    specs = plan_runs(config_file, models, opts, seeds=seeds, output=output)
    target = choose_target(specs[0].cfg, target)
    header = _header(argv or sys.argv, target, specs)
    steps = len(specs) + seeds * len(ABLATION_DISTANCES) * (PROFD in models)
    table: Dict[str, Dict[str, Any]] = {}
    step = 0

    def progress_for(label: str):
        def progress(msg: str) -> None:
            print(f"[benchmark {step}/{steps}] {label}: {msg}", flush=True)
        return progress

    for model in models:
        trained = []
        for spec in (s for s in specs if s.model == model):
            step += 1
            trained.append((spec, train_run(spec.cfg, progress_for(f"{model} seed {spec.seed}"))))
        table[model] = aggregate(_row([r for _, r in trained]), target)
        write_tables(table, specs[0].cfg.data.save_dir, header)
        if model != PROFD:
            continue
        for distance in ABLATION_DISTANCES:
            records = []
            for spec, rec in trained:
                step += 1
                ev = eval_run(spec.cfg, final_checkpoint(rec.run_dir, spec.cfg), distance,
                              progress_for(f"{ablation_name(distance)} seed {spec.seed}"))
                ev.metrics = {k: rec.metrics.get(k) for k in ("params", "params_total", "infer_img_s")}
                records.append(ev)
            table[ablation_name(distance)] = aggregate(_row(records), target)
            write_tables(table, specs[0].cfg.data.save_dir, header)
    paths = write_tables(table, specs[0].cfg.data.save_dir, header)
    print(f"\n{format_markdown(table)}\n\nwritten: {paths['md']}, {paths['csv']}, {paths['json']}",
          flush=True)
    return table
