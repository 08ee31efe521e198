"""The standard torchreid flow, driven by a config: data manager, model, optimizer, scheduler, engine, run.

``tools/main.py`` is a thin command line over :func:`run_from_cfg`. Works for ``model.name=profd``
(:class:`~profd_plugin.engine.ProFDEngine`) and for any torchreid built-in model (softmax or triplet
engine per ``loss.name``), on the same data and evaluation protocol.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import os.path as osp
import sys
import time
from dataclasses import dataclass
from typing import Dict, Optional, TextIO

import torch
import torch.distributed as dist
from tabulate import tabulate
from yacs.config import CfgNode

from .checkpoint import checkpoint_config, load_model_state, read_checkpoint, verify_config
from .distributed import is_distributed, is_main_process
from .engine import ProFDEngine, SoftmaxEngine, TripletEngine, seed_everything, warmup_multi_step_lambda
from .errors import CheckpointError, ConfigError
from .fileio import atomic_write
from .reproduction import log_reproduction_warnings, reproduction_warnings
from .runs import (
    RESULTS_FILE,
    find_resume_checkpoint,
    new_run_dir,
    run_dir_of_checkpoint,
    write_run_config,
)

logger = logging.getLogger(__name__)

PROFD = "profd"


class Tee:
    """Copy ``sys.stdout`` into a log file for the duration of a ``with`` block (restores it after)."""

    def __init__(self, path: str):
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        self.path, self.file, self.console = path, None, None

    def __enter__(self) -> "Tee":
        self.file, self.console = open(self.path, "a"), sys.stdout
        sys.stdout = self
        return self

    def write(self, msg: str) -> None:
        self.console.write(msg)
        self.file.write(msg)

    def flush(self) -> None:
        self.console.flush()
        self.file.flush()

    def isatty(self) -> bool:
        return False

    def __exit__(self, *exc) -> None:
        sys.stdout = self.console
        self.file.close()


def init_distributed(use_gpu: bool) -> tuple:
    """Initialise torch.distributed from torchrun's environment; returns (rank, world_size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if use_gpu else "gloo"
        if use_gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def build_datamanager(cfg: CfgNode, rank: int = 0, world_size: int = 1):
    from .data.datamanager import ProFDDataManager

    with_masks = cfg.model.name == PROFD  # built-in baselines read no mask files
    return ProFDDataManager.from_cfg(cfg, with_masks=with_masks, rank=rank, world_size=world_size)


def build_model(cfg: CfgNode, num_classes: int, use_gpu: bool) -> torch.nn.Module:
    """ProFD through :func:`build_profd_model`; anything else through torchreid's ``build_model``."""
    if cfg.model.name == PROFD:
        from .modeling import build_profd_model

        return build_profd_model(cfg, num_classes)
    from torchreid.reid.models import build_model as host_build_model

    return host_build_model(cfg.model.name, num_classes, loss=cfg.loss.name,
                            pretrained=cfg.model.pretrained, use_gpu=use_gpu)


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over the model's own parameter groups (ProFD), or torchreid's ``build_optimizer``."""
    t = cfg.train
    betas = (cfg.adam.beta1, cfg.adam.beta2)
    if hasattr(model, "param_groups"):
        if t.optim != "adamw":
            raise ValueError(f"train.optim '{t.optim}': ProFD is trained with adamw (official recipe)")
        groups = model.param_groups(t.lr, t.weight_decay, backbone_lr_mult=cfg.profd.optim.backbone_lr_mult,
                                    no_decay_bias_norm=cfg.profd.optim.no_decay_bias_norm)
        return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay, betas=betas)
    if t.optim == "adamw":
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, betas=betas)
    from torchreid.reid.optim import build_optimizer as host_build_optimizer

    return host_build_optimizer(
        model, optim=t.optim, lr=t.lr, weight_decay=t.weight_decay, momentum=cfg.sgd.momentum,
        sgd_dampening=cfg.sgd.dampening, sgd_nesterov=cfg.sgd.nesterov, rmsprop_alpha=cfg.rmsprop.alpha,
        adam_beta1=cfg.adam.beta1, adam_beta2=cfg.adam.beta2, staged_lr=t.staged_lr,
        new_layers=t.new_layers, base_lr_mult=t.base_lr_mult)


def build_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer):
    """Per-epoch LR schedule: the official warm-up multi-step, or one of torchreid's."""
    t = cfg.train
    if t.lr_scheduler == "warmup_multi_step":
        factor = warmup_multi_step_lambda(t.stepsize, t.gamma, cfg.profd.train.warmup_epochs,
                                          cfg.profd.train.warmup_factor)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    from torchreid.reid.optim import build_lr_scheduler

    return build_lr_scheduler(optimizer, lr_scheduler=t.lr_scheduler, stepsize=t.stepsize, gamma=t.gamma,
                              max_epoch=t.max_epoch)


def build_criterion(cfg: CfgNode):
    """The ProFD criterion (None for torchreid built-ins, whose engines bring their own losses)."""
    if cfg.model.name != PROFD:
        return None
    from .losses import build_profd_criterion

    return build_profd_criterion(cfg)


def build_engine(cfg: CfgNode, datamanager, model, criterion, optimizer, scheduler, use_gpu: bool):
    common = dict(seed=cfg.train.seed, checkpoint_freq=cfg.profd.train.checkpoint_freq, config=cfg)
    if criterion is not None:
        engine = ProFDEngine(datamanager, model, criterion, optimizer, scheduler, use_gpu=use_gpu,
                             amp=cfg.profd.train.amp, grad_clip=cfg.profd.train.grad_clip,
                             memory_init=cfg.profd.train.memory_init, **common)
        t = cfg.profd.test
        engine.configure_eval(distance=t.distance, metric=t.metric, chunk_size=t.chunk_size, flip=t.flip,
                              device=t.device)
        return engine
    if cfg.loss.name == "softmax":
        return SoftmaxEngine(datamanager, model, optimizer=optimizer, scheduler=scheduler, use_gpu=use_gpu,
                             label_smooth=cfg.loss.softmax.label_smooth, **common)
    if cfg.loss.name == "triplet":
        tr = cfg.loss.triplet
        return TripletEngine(datamanager, model, optimizer=optimizer, margin=tr.margin, weight_t=tr.weight_t,
                             weight_x=tr.weight_x, scheduler=scheduler, use_gpu=use_gpu,
                             label_smooth=cfg.loss.softmax.label_smooth, **common)
    raise ValueError(f"loss.name must be softmax | triplet, got '{cfg.loss.name}'")


def _may_have_unused_parameters(cfg: CfgNode, criterion) -> bool:
    """DDP must look for unused parameters when a loss term is off or an ablation drops a branch
    (the search costs a graph traversal per step, so it is off for the full recipe)."""
    if criterion is None:  # torchreid built-ins: unknown graphs
        return True
    return min(criterion.weights.values()) == 0 or cfg.profd.decoder.attention != "hybrid"


def _no_buffer_sync() -> dict:
    """DDP keyword that stops buffer broadcasts in forward: the memory banks are kept equal by all-gathered
    updates, and BN running statistics stay per rank (rank 0's are saved), as with the official
    ``nn.DataParallel``. Newer torch spells it ``forward_sync_buffers=False`` (``broadcast_buffers`` is
    deprecated there); it still syncs once at construction, when every rank holds the same seeded values."""
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return {key: False}


def engine_run_kwargs(cfg: CfgNode, run_dir: str) -> dict:
    """``Engine.run`` keyword arguments of ``cfg``; everything is written into ``run_dir``."""
    return dict(
        save_dir=run_dir, max_epoch=cfg.train.max_epoch, start_epoch=cfg.train.start_epoch,
        print_freq=cfg.train.print_freq, fixbase_epoch=cfg.train.fixbase_epoch,
        open_layers=cfg.train.open_layers, start_eval=cfg.test.start_eval, eval_freq=cfg.test.eval_freq,
        test_only=cfg.test.evaluate, dist_metric=cfg.test.dist_metric,
        normalize_feature=cfg.test.normalize_feature, visrank=cfg.test.visrank,
        visrank_topk=cfg.test.visrank_topk, ranks=list(cfg.test.ranks), rerank=cfg.test.rerank,
    )


def format_results(results: Dict[str, Dict[str, float]]) -> str:
    """A table of R1 / R5 / R10 / mAP in percent, one row per dataset."""
    rows = [[name, *(100 * r[k] for k in ("rank1", "rank5", "rank10", "mAP"))] for name, r in results.items()]
    return tabulate(rows, headers=["dataset", "R1", "R5", "R10", "mAP"], floatfmt=".1f", tablefmt="github")


def write_results(results: Dict[str, Dict[str, float]], run_dir: str) -> str:
    """Atomically write ``<run_dir>/results.json`` (fractions in [0, 1])."""
    path = osp.join(run_dir, RESULTS_FILE)
    atomic_write(path, lambda f: json.dump(results, f, indent=2), binary=False)
    return path


@dataclass
class RunPlan:
    """Where a run writes and what it continues (see :mod:`profd_plugin.runs`).

    Attributes:
        run_dir: the run's own folder under ``data.save_dir`` (new, or the resumed run's).
        kind: ``train`` or ``eval`` (``test.evaluate``).
        resume_path: the checkpoint to resume from, or None.
    """

    run_dir: str
    kind: str
    resume_path: Optional[str] = None


def weights_path(cfg: CfgNode) -> str:
    """``model.load_weights``, with '' and 'none' meaning no weights."""
    path = cfg.model.load_weights.strip()
    return "" if path.lower() == "none" else path


def _resume_path(cfg: CfgNode) -> str:
    if cfg.model.resume != "auto":
        return osp.abspath(osp.expanduser(cfg.model.resume))
    path = find_resume_checkpoint(cfg.data.save_dir, cfg)
    if path is None:
        raise CheckpointError(f"model.resume auto: no checkpoint of a '{cfg.model.name}' training run with "
                              f"this config under {osp.abspath(cfg.data.save_dir)} (runs of other models or "
                              "configs are not considered)")
    return path


def prepare_run(cfg: CfgNode) -> RunPlan:
    """Decide the run folder (rank 0 creates it and writes ``config.yaml``; every rank gets its name).

    Raises:
        ConfigError: evaluation without ``model.load_weights``; an unusable ``data.save_dir``.
        CheckpointError: ``model.resume auto`` found nothing to resume.
    """
    kind = "eval" if cfg.test.evaluate else "train"
    if kind == "eval" and not cfg.model.load_weights.strip():
        raise ConfigError("evaluation (--eval-only / test.evaluate True) needs model.load_weights "
                          "<checkpoint>; give model.load_weights none to evaluate the untrained model")
    resume = _resume_path(cfg) if kind == "train" and cfg.model.resume else None
    run_dir = run_dir_of_checkpoint(resume) if resume else None  # a resumed run continues in its folder
    if is_main_process() and run_dir is None:
        run_dir = new_run_dir(cfg.data.save_dir, cfg.model.name, kind)
        write_run_config(run_dir, cfg)
    if is_distributed():  # every rank uses rank 0's folder name
        holder = [run_dir]
        dist.broadcast_object_list(holder, src=0)
        run_dir = holder[0]
    return RunPlan(run_dir=run_dir, kind=kind, resume_path=resume)


def load_weights(model: torch.nn.Module, cfg: CfgNode, path: str, *, training: bool) -> None:
    """``model.load_weights``: verify the checkpoint against ``cfg`` and load it exactly.

    Another number of identities is allowed: the identity classifiers and memory banks keep their fresh
    values (one log line says so). For training, ProFD's memory banks are always rebuilt by the init pass
    (as the official engine does at every start).

    Raises:
        CheckpointError: naming the file and the first differing config key or tensor.
    """
    ckpt = read_checkpoint(path)
    verify_config(checkpoint_config(ckpt, path), cfg, path)
    if load_model_state(model, ckpt, path, allow_other_identities=True):
        logger.info("%s was trained with %s identities, this run has %d: identity classifiers and memory "
                    "banks re-initialised", path, ckpt.get("num_classes", "another number of"),
                    getattr(model, "num_classes", -1))
    memory = getattr(model, "memory", None)
    if training and memory is not None:
        memory.reset()
        logger.info("memory banks will be initialised from the training set (model.load_weights)")
    print(f'Loaded weights from "{path}"')


def setup_engine(cfg: CfgNode, plan: Optional[RunPlan] = None):
    """Build data manager, model, optimizer, scheduler and engine (and resume); returns
    ``(engine, run_kwargs)`` ready for ``engine.run(**run_kwargs)``."""
    use_gpu = torch.cuda.is_available()
    rank, world = init_distributed(use_gpu)
    plan = plan or prepare_run(cfg)
    seed_everything(cfg.train.seed)
    datamanager = build_datamanager(cfg, rank, world)
    if is_main_process():
        log_reproduction_warnings(reproduction_warnings(
            cfg, datamanager, world_size=world, use_gpu=use_gpu, training=plan.kind == "train",
            float32_matmul_precision=torch.get_float32_matmul_precision()))
    model = build_model(cfg, datamanager.num_train_pids, use_gpu)
    if weights_path(cfg):
        load_weights(model, cfg, weights_path(cfg), training=plan.kind == "train")
    device = torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")
    model = model.to(device)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    criterion = build_criterion(cfg)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if use_gpu else None,
            find_unused_parameters=_may_have_unused_parameters(cfg, criterion), **_no_buffer_sync())
    engine = build_engine(cfg, datamanager, model, criterion, optimizer, scheduler, use_gpu)
    kwargs = engine_run_kwargs(cfg, plan.run_dir)
    if plan.resume_path:
        kwargs["start_epoch"] = engine.resume(plan.resume_path)
        if is_main_process() and run_dir_of_checkpoint(plan.resume_path):
            write_run_config(plan.run_dir, cfg)  # the config the run continues with, once it fits
    return engine, kwargs


def run_from_cfg(cfg: CfgNode, out: Optional[TextIO] = None, plan: Optional[RunPlan] = None
                 ) -> Dict[str, Dict[str, float]]:
    """Everything ``tools/main.py`` does after parsing the config; returns the results dict
    (printed as a table and written to ``<run dir>/results.json`` by rank 0)."""
    engine, kwargs = setup_engine(cfg, plan)
    t0 = time.time()
    results = engine.run(**kwargs)
    report_results(results, kwargs["save_dir"], time.time() - t0, out)
    return results


def report_results(results: Dict[str, Dict[str, float]], run_dir: str, seconds: float,
                   out: Optional[TextIO] = None) -> None:
    """Rank 0 prints the table and writes ``<run_dir>/results.json``."""
    if is_main_process() and results:
        print("\n" + format_results(results), file=out or sys.stdout)
        path = write_results(results, run_dir)
        print(f"results written to {path} ({seconds:.0f}s)", file=out or sys.stdout)
