"""Running one benchmark row: train (or reuse, or resume) a run, evaluate ProFD's ablation distances.

Every run is an ordinary run folder of :mod:`profd_plugin.runs` under the benchmark's output folder
(``data.save_dir``), made in this process with :func:`~profd_plugin.training.setup_engine`, plus
:data:`RUN_FILE`, the benchmark's record of the run (efficiency figures, per-epoch training times; written
after every epoch, complete once ``results.json`` exists):

* a **finished** run (:func:`~profd_plugin.runs.find_finished_run`: same model, training identity and
  epochs, ``results.json`` written) is reused without building anything;
* an **unfinished** one (a checkpoint of the same model and training identity, from at most
  ``train.max_epoch`` epochs, and no results) is resumed in its own folder (``model.resume``);
* otherwise a new run starts.

``train_s`` is the sum of the per-epoch training times plus ProFD's memory-bank initialisation pass (an
epoch interrupted and run again counts once); evaluation is not included.
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import os.path as osp
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Optional

import torch
from yacs.config import CfgNode

from ..fileio import atomic_write
from ..runs import RESULTS_FILE, find_finished_run, find_resume_checkpoint, read_run_config, runs_of
from ..training import Tee, prepare_run, report_results, setup_engine
from .measure import PeakMemory, inference_images_per_s, inference_params, total_params

__all__ = ["RUN_FILE", "RunRecord", "train_run", "eval_run", "final_checkpoint"]

logger = logging.getLogger(__name__)

RUN_FILE = "benchmark_run.json"
_CKPT_EPOCH = re.compile(r"model\.pth\.tar-(\d+)")
Progress = Callable[[str], None]


@dataclass
class RunRecord:
    """The outcome of one run of a benchmark row.

    Attributes:
        run_dir: the run folder.
        results: ``{target: {rank1, rank5, rank10, mAP}}`` (fractions).
        metrics: ``params``, ``params_total``, ``infer_img_s``, ``train_s``, ``peak_mem_mb`` (None = unknown).
        reused: True when the finished run was reused without running anything.
    """

    run_dir: str
    results: Dict[str, Dict[str, float]]
    metrics: Dict[str, Any] = field(default_factory=dict)
    reused: bool = False


def _with(cfg: CfgNode, *opts: Any) -> CfgNode:
    out = cfg.clone()
    out.defrost()
    out.merge_from_list([str(x) for x in opts])
    out.freeze()
    return out


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, obj: dict) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=2), binary=False)


def final_checkpoint(run_dir: str, cfg: CfgNode) -> str:
    """``<run_dir>/model/model.pth.tar-<train.max_epoch>``: the weights a finished run ends with."""
    return osp.join(run_dir, "model", f"model.pth.tar-{cfg.train.max_epoch}")


def _resumable(save_dir: str, cfg: CfgNode) -> Optional[str]:
    """The newest checkpoint of an unfinished matching run, unless it is past ``train.max_epoch``."""
    path = find_resume_checkpoint(save_dir, cfg)
    match = _CKPT_EPOCH.search(osp.basename(path or ""))
    return path if match and int(match.group(1)) <= cfg.train.max_epoch else None


@contextlib.contextmanager
def _run_log(run_dir: str, kind: str) -> Iterator[None]:
    """Copy the console (prints and the console's log records) into the run's log file, as tools/main.py."""
    name = "test.log" if kind == "eval" else "train.log"
    console = sys.stdout
    handlers = [h for h in logging.getLogger().handlers
                if type(h) is logging.StreamHandler and h.stream is console]
    with Tee(osp.join(run_dir, f"{name}-{time.strftime('%Y-%m-%d-%H-%M-%S')}")) as tee:
        for handler in handlers:
            handler.setStream(tee)
        try:
            yield
        finally:
            for handler in handlers:
                handler.setStream(console)


def _instrument(engine, record: dict, path: str, device: torch.device, progress: Progress) -> None:
    """Time every training epoch (and the memory-bank pass) into ``record``, saved to ``path`` each time."""
    peak = PeakMemory(device=device)
    peak.reset()
    train, before = engine.train, engine.before_training

    def timed(fn: Callable, *args, **kwargs) -> float:
        start = time.perf_counter()
        fn(*args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    def save() -> None:
        record["peak_mem_mb"] = max(record.get("peak_mem_mb") or 0.0, peak.peak_mib())
        _write_json(path, record)

    def train_epoch(*args, **kwargs) -> None:
        epoch = engine.epoch + 1
        seconds = record.setdefault("epoch_s", {})[str(epoch)] = timed(train, *args, **kwargs)
        save()
        eta = (engine.max_epoch - epoch) * seconds
        progress(f"epoch {epoch}/{engine.max_epoch} in {seconds:.1f} s (about {eta / 60:.1f} min left)")

    def memory_init() -> None:
        seconds = timed(before)
        # a resumed run restores the banks from its checkpoint: the first start's pass is what it cost
        record.setdefault("memory_init_s", seconds)
        save()

    engine.train, engine.before_training = train_epoch, memory_init


def _train_s(record: dict, max_epoch: int) -> float:
    epochs = record.get("epoch_s", {})
    return sum(v for k, v in epochs.items() if int(k) <= max_epoch) + record.get("memory_init_s", 0.0)


def _reuse(run_dir: str) -> RunRecord:
    results = _read_json(osp.join(run_dir, RESULTS_FILE)) or {}
    record = _read_json(osp.join(run_dir, RUN_FILE)) or {}
    keys = ("params", "params_total", "infer_img_s", "train_s", "peak_mem_mb")
    return RunRecord(run_dir=run_dir, results=results, metrics={k: record.get(k) for k in keys}, reused=True)


def train_run(cfg: CfgNode, progress: Progress) -> RunRecord:
    """Reuse, resume or start the training run of ``cfg`` (see the module docstring)."""
    save_dir = cfg.data.save_dir
    finished = find_finished_run(save_dir, cfg)
    if finished is not None:
        progress(f"reusing the finished run {finished}")
        return _reuse(finished)
    resume = _resumable(save_dir, cfg)
    if resume:
        progress(f"resuming {resume}")
    plan = prepare_run(_with(cfg, "model.resume", resume or ""))
    path = osp.join(plan.run_dir, RUN_FILE)
    record = {k: v for k, v in (_read_json(path) or {}).items() if k in ("epoch_s", "memory_init_s",
                                                                         "peak_mem_mb")}
    progress(f"training in {plan.run_dir}")
    with _run_log(plan.run_dir, plan.kind):
        print(f"Config:\n{cfg}\n")
        engine, kwargs = setup_engine(_with(cfg, "model.resume", resume or ""), plan)
        device = engine._device
        gc.collect()  # the previous run's garbage should not count towards this run's peak memory
        _instrument(engine, record, path, device, progress)
        start = time.time()
        results = engine.run(**kwargs)
        model = engine.core_model
        progress("measuring inference throughput")
        record.update(params=inference_params(model), params_total=total_params(model),
                      infer_img_s=inference_images_per_s(model, batch_size=cfg.test.batch_size,
                                                         height=cfg.data.height, width=cfg.data.width,
                                                         device=device),
                      train_s=_train_s(record, cfg.train.max_epoch), device=str(device))
        _write_json(path, record)  # before results.json: a run with results always has its record
        report_results(results, plan.run_dir, time.time() - start)
    sys.stdout.flush()
    return RunRecord(run_dir=plan.run_dir, results=results,
                     metrics={k: record.get(k) for k in ("params", "params_total", "infer_img_s", "train_s",
                                                         "peak_mem_mb")})


def _finished_eval(cfg: CfgNode) -> Optional[str]:
    """The newest evaluation run of the same checkpoint and distance that wrote its results."""
    for run_dir in reversed(runs_of(cfg.data.save_dir, cfg, "eval")):
        run_cfg = read_run_config(run_dir)
        if (osp.isfile(osp.join(run_dir, RESULTS_FILE))
                and run_cfg.profd.test.distance == cfg.profd.test.distance):
            return run_dir
    return None


def eval_run(cfg: CfgNode, checkpoint: str, distance: str, progress: Progress) -> RunRecord:
    """Evaluate ``checkpoint`` with ``profd.test.distance distance`` (an evaluation-only run, reused when
    one with the same checkpoint and distance finished before)."""
    cfg = _with(cfg, "test.evaluate", True, "model.load_weights", osp.abspath(checkpoint),
                "profd.test.distance", distance)
    done = _finished_eval(cfg)
    if done is not None:
        progress(f"reusing the finished evaluation {done}")
        return RunRecord(run_dir=done, results=_read_json(osp.join(done, RESULTS_FILE)) or {}, reused=True)
    plan = prepare_run(cfg)
    progress(f"evaluating {checkpoint} with profd.test.distance {distance} in {plan.run_dir}")
    with _run_log(plan.run_dir, plan.kind):
        print(f"Config:\n{cfg}\n")
        engine, kwargs = setup_engine(cfg, plan)
        start = time.time()
        results = engine.run(**kwargs)
        report_results(results, plan.run_dir, time.time() - start)
    return RunRecord(run_dir=plan.run_dir, results=results)
