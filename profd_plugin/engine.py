"""Training engines built on torchreid's ``Engine``.

* :class:`ProFDEngine` trains ProFD: memory-bank initialisation pass, ``forward_backward`` with
  :class:`~profd_plugin.losses.ProFDCriterion` (the flat loss dict goes to the log and tensorboard), AMP
  (bf16, or fp16 with a grad scaler; CUDA only), optional gradient clipping, a guard that stops on a
  non-finite loss naming the step and the term.
* :class:`SoftmaxEngine` / :class:`TripletEngine`: torchreid's built-in engines with the plugin's
  evaluation, checkpointing and resume, so built-in baselines run on the same data and protocol.

Every engine here shares :class:`LoopMixin`: per-epoch deterministic seeding (so a resumed run continues
exactly), atomic self-describing checkpoints (:mod:`profd_plugin.checkpoint`) every ``checkpoint_freq``
epochs and at the end, a checkpoint on Ctrl-C, ``resume`` (model incl. memory banks, optimizer, scheduler,
grad scaler, epoch; verified against the run's config), DDP (rank 0 logs, evaluates and saves), and an
epoch-start hook that never unfreezes what the model froze.
"""
from __future__ import annotations

import datetime
import logging
import math
import os.path as osp
import random
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torchreid.reid.engine import Engine, ImageSoftmaxEngine, ImageTripletEngine
from yacs.config import CfgNode

from .checkpoint import checkpoint_config, load_model_state, make_checkpoint, read_checkpoint, verify_config
from .choices import AMP_MODES
from .distributed import get_rank, is_distributed, is_main_process
from .errors import CheckpointError, NonFiniteLossError, ProFDError
from .evaluation import EvaluationMixin
from .fileio import atomic_torch_save, remove_stale_temp_files
from .interrupt import TrainingInterrupted, stop_requested
from .losses import ProFDTargets
from .runs import CHECKPOINT_DIR, CHECKPOINT_PREFIX

logger = logging.getLogger(__name__)

#: stages of one training step, in order (``ProFDEngine.forward_backward``'s ``clock``)
TRAIN_STAGES = ("data", "forward", "losses", "backward", "optimizer", "memory_update")


def _no_clock(stage: str) -> None:
    """The training step's clock when nobody times it."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices).

    Not torchreid's ``set_random_seed``: that passes the seed to numpy unchanged, which rejects the negative
    seeds ``begin_epoch(-1)`` (the memory-init pass) produces for ``train.seed`` < 1000.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class LoopMixin(EvaluationMixin):
    """The training loop and checkpointing shared by every engine of the plugin."""

    seed: int = 0
    checkpoint_freq: int = 10
    scaler: Optional[torch.amp.GradScaler] = None
    #: the run's config, stored in every checkpoint (None for engines built without one)
    config: Optional[CfgNode] = None

    @property
    def core_model(self) -> torch.nn.Module:
        """The model without a (Distributed)DataParallel wrapper."""
        return getattr(self.model, "module", self.model)

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint_state(self, epochs_done: int, rank1: float = 0.0) -> dict:
        """The self-describing checkpoint of the current state (see :mod:`profd_plugin.checkpoint`)."""
        return make_checkpoint(self.core_model, self.config, num_classes=self.datamanager.num_train_pids,
                               epoch=epochs_done, rank1=rank1, optimizer=self.optimizer,
                               scheduler=self.scheduler, scaler=self.scaler, seed=self.seed)

    def save_checkpoint(self, epochs_done: int, save_dir: str, rank1: float = 0.0, suffix: str = "") -> str:
        """Atomically write ``save_dir/model/model.pth.tar-<epochs_done><suffix>`` (rank 0 only)."""
        path = osp.join(save_dir, CHECKPOINT_DIR, f"{CHECKPOINT_PREFIX}{epochs_done}{suffix}")
        if is_main_process():
            atomic_torch_save(self.checkpoint_state(epochs_done, rank1), path)
            print(f'Checkpoint saved to "{path}"')
        return path

    def resume(self, path: str) -> int:
        """Restore model (with memory banks), optimizer, scheduler and scaler; returns the start epoch.

        Raises:
            CheckpointError: the file is not a checkpoint of this model, architecture and number of
                identities (one line naming the file and the first difference).
        """
        ckpt = read_checkpoint(path)
        if self.config is not None:
            verify_config(checkpoint_config(ckpt, path), self.config, path)
        load_model_state(self.core_model, ckpt, path)
        if ckpt.get("optimizer") is None:
            raise CheckpointError(f"checkpoint {path} holds weights only (no optimizer state): start from it "
                                  "with model.load_weights instead of model.resume")
        if ckpt.get("seed", self.seed) != self.seed:
            logger.warning("resuming with train.seed %d, the run was started with %d: the continuation will "
                           "not match an uninterrupted run", self.seed, ckpt["seed"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        print(f'Resumed from "{path}" (epoch {ckpt["epoch"]})')
        return int(ckpt["epoch"])

    def two_stepped_transfer_learning(self, epoch, fixbase_epoch, open_layers, model=None) -> None:
        """torchreid's epoch-start hook, except that parameters the model froze itself stay frozen.

        torchreid's version calls ``open_all_layers`` at every epoch start, which sets
        ``requires_grad=True`` on every parameter (e.g. a deliberately frozen CLIP text encoder or the
        BNNeck biases). Here the trainable set of the first call is remembered and restored instead.
        """
        from torchreid.reid.utils import open_specified_layers

        model = self.model if model is None else model
        if model is None:
            return
        trainable = {n: p.requires_grad for n, p in model.named_parameters()}
        snap = self.__dict__.setdefault("_trainable", trainable)  # the first call's set is the model's own
        if (epoch + 1) <= fixbase_epoch and open_layers is not None:
            print(f"* Only train {open_layers} (epoch: {epoch + 1}/{fixbase_epoch})")
            open_specified_layers(model, open_layers)
            for n, p in model.named_parameters():
                p.requires_grad = p.requires_grad and snap.get(n, True)
        else:
            model.train()
            for n, p in model.named_parameters():
                p.requires_grad = snap.get(n, True)

    # -- loop ----------------------------------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        """Seed every RNG from (seed, epoch, rank): the RNG state at an epoch start is reproducible, so a
        resumed run continues exactly without storing generator states."""
        rank = get_rank()
        seed_everything(self.seed + 1000 * epoch + rank)
        loader = self.train_loader
        if getattr(loader, "generator", None) is not None:
            loader.generator.manual_seed(self.seed + 1000 * epoch + rank)
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def before_training(self) -> None:
        """Hook run once before the first epoch of every run (fresh or resumed)."""

    def run(self, save_dir: str = "log", max_epoch: int = 0, start_epoch: int = 0, print_freq: int = 10,
            fixbase_epoch: int = 0, open_layers=None, start_eval: int = 0, eval_freq: int = -1,
            test_only: bool = False, dist_metric: str = "euclidean", normalize_feature: bool = False,
            visrank: bool = False, visrank_topk: int = 10, use_metric_cuhk03: bool = False,
            ranks: Sequence[int] = (1, 5, 10, 20), rerank: bool = False) -> Dict[str, Dict[str, float]]:
        """Train ``start_epoch..max_epoch`` then test; returns ``self.results`` (empty on ranks > 0)."""
        self.results = {}
        test_kw = dict(dist_metric=dist_metric, normalize_feature=normalize_feature, visrank=visrank,
                       visrank_topk=visrank_topk, save_dir=save_dir, use_metric_cuhk03=use_metric_cuhk03,
                       ranks=ranks, rerank=rerank)
        if test_only:
            if is_main_process():
                self.test(**test_kw)
            return self.results
        if is_main_process() and remove_stale_temp_files(osp.join(save_dir, CHECKPOINT_DIR)):
            print("removed partial checkpoint files left by an interrupted run")
        if self.writer is None and is_main_process():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=save_dir)
        self.start_epoch, self.max_epoch = start_epoch, max_epoch
        time_start, rank1 = time.time(), 0.0
        done = start_epoch  # epochs completed: the scheduler has stepped this many times
        print("=> Start training")
        try:
            self.before_training()
            for self.epoch in range(start_epoch, max_epoch):
                self.begin_epoch(self.epoch)
                self.train(print_freq=print_freq, fixbase_epoch=fixbase_epoch, open_layers=open_layers)
                done = self.epoch + 1
                if done >= start_eval and eval_freq > 0 and done % eval_freq == 0 and done != max_epoch:
                    rank1 = self._test_on_main(test_kw)
                if done % max(self.checkpoint_freq, 1) == 0 or done == max_epoch:
                    self.save_checkpoint(done, save_dir, rank1)
        except KeyboardInterrupt as interrupt:
            # mid-epoch: the weights so far with the scheduler at the epoch start (the epoch is re-run);
            # after an epoch (during a test or a save): the completed epoch
            path = self.save_checkpoint(done, save_dir, rank1, suffix="-interrupted")
            signame = interrupt.args[0] if isinstance(interrupt, TrainingInterrupted) else "SIGINT"
            what = f"epoch {done + 1} is re-run from its start" if done < max_epoch else \
                "the final evaluation is re-run"
            print(f"Interrupted ({signame}) after {done} epoch(s). Resume with: model.resume {path} "
                  f"(or model.resume auto); {what}")
            raise
        print("=> Final test")  # also when resuming a finished run: its results are reported again
        self._test_on_main(test_kw)
        print(f"Elapsed {datetime.timedelta(seconds=round(time.time() - time_start))}")
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        return self.results

    def stop_flags(self, nonfinite: bool = False) -> Tuple[bool, Optional[int]]:
        """Agree across ranks on (a non-finite loss somewhere, a stop signal somewhere): one all-reduce."""
        flags = torch.tensor([float(nonfinite), float(stop_requested() or 0)], device=self._device)
        if is_distributed():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        signum = int(flags[1].item())
        return bool(flags[0].item()), (signum or None)

    def forward_backward(self, data):
        """torchreid's step (built-in engines), after polling for a stop signal under DDP."""
        if is_distributed():
            _, signum = self.stop_flags()
            if signum:
                raise TrainingInterrupted(signum)
        return super().forward_backward(data)

    def _test_on_main(self, test_kw: dict) -> float:
        rank1 = self.test(**test_kw) if is_main_process() else 0.0
        if is_distributed():
            dist.barrier()
        return rank1


class ProFDEngine(LoopMixin, Engine):
    """torchreid ``Engine`` for ProFD.

    Args:
        datamanager: a :class:`~profd_plugin.data.datamanager.ProFDDataManager` built with masks.
        model: the ProFD model (optionally wrapped in ``DistributedDataParallel``).
        criterion: :class:`~profd_plugin.losses.ProFDCriterion`.
        optimizer, scheduler: torch optimizer and (per-epoch) scheduler.
        use_gpu: run on CUDA when available.
        amp: ``"none"`` | ``"bf16"`` | ``"fp16"`` (CUDA only; ignored on CPU).
        grad_clip: max gradient norm (0 = off).
        memory_init: initialise the PCL banks with a pass over the training loader before epoch 1.
        seed: base seed of the per-epoch seeding.
        checkpoint_freq: save every N epochs (and at the end).
        config: the run's config, stored in every checkpoint and checked on resume.
    """

    def __init__(self, datamanager, model, criterion, optimizer, scheduler=None, *, use_gpu: bool = True,
                 amp: str = "none", grad_clip: float = 0.0, memory_init: bool = True, seed: int = 0,
                 checkpoint_freq: int = 10, config: Optional[CfgNode] = None):
        if not getattr(datamanager, "with_masks", False):
            raise ProFDError("ProFDEngine needs a data manager that yields part masks: "
                             "profd_plugin.data.datamanager.ProFDDataManager(..., with_masks=True) or "
                             ".from_cfg(cfg, with_masks=True) (torchreid's ImageDataManager yields images "
                             "only; it can train ProFD's global branch through torchreid's own engines)")
        super().__init__(datamanager, use_gpu)
        if amp not in AMP_MODES:
            raise ValueError(f"profd.train.amp must be one of {AMP_MODES}, got '{amp}'")
        self.model, self.criterion = model, criterion
        self.optimizer, self.scheduler = optimizer, scheduler
        self.register_model("model", model, optimizer, scheduler)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if self.use_gpu else None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.grad_clip, self.memory_init = grad_clip, memory_init
        self.seed, self.checkpoint_freq, self.config = seed, checkpoint_freq, config

    def _autocast(self):
        enabled = self.amp_dtype is not None
        return torch.autocast("cuda", dtype=self.amp_dtype or torch.float32, enabled=enabled)

    def parse_data_for_train(self, data):
        dev = self._device
        return (data["img"].to(dev, non_blocking=True), data["pid"].to(dev, non_blocking=True),
                data["masks"].to(dev, non_blocking=True), data["visibility"].to(dev, non_blocking=True))

    @torch.no_grad()
    def before_training(self) -> None:
        """Initialise the PCL memory banks (official: one eval-mode pass over the training loader)."""
        memory = self.core_model.memory
        if not self.memory_init or memory.initialized:
            return
        print("=> Initialising memory banks from the training set")
        self.begin_epoch(-1)
        memory.initialize(self._pooled_features())
        self.core_model.train()

    def _pooled_features(self):
        """``(global_bn, masked_concat_bn, pids)`` of every training batch (the banks' init pass)."""
        core = self.core_model
        for data in self.train_loader:
            imgs, pids, masks, _ = self.parse_data_for_train(data)
            with self._autocast():
                global_bn, parts_bn = core.pooled_part_features(imgs, masks)
            yield global_bn, parts_bn, pids

    def _check_finite(self, values: Dict[str, float]) -> None:
        """Stop every rank before a step on a non-finite loss or a stop signal (one all-reduce decides)."""
        bad = [name for name, v in values.items() if not math.isfinite(v)]
        nonfinite, signum = self.stop_flags(bool(bad))
        if signum:
            raise TrainingInterrupted(signum)
        if nonfinite:
            where = f"epoch {self.epoch + 1} step {self.batch_idx + 1}"
            terms = ", ".join(f"{n} = {values[n]}" for n in bad) if bad else "on another rank"
            raise NonFiniteLossError(f"non-finite loss at {where}: {terms}; lower train.lr, enable "
                                     "profd.train.grad_clip or check the data")

    def forward_backward(self, data, clock: Optional[Callable[[str], None]] = None) -> Dict[str, float]:
        """One training step; returns the loss terms and their total as floats.

        Args:
            data: a train batch dict.
            clock: called with each stage name of ``TRAIN_STAGES`` when that stage ends (the step-time
                breakdown of ``benchmarks/throughput.py``); None for training.
        """
        clock = clock or _no_clock
        imgs, pids, masks, visibility = self.parse_data_for_train(data)
        clock("data")
        core = self.core_model
        with self._autocast():
            outputs = self.model(imgs)
        clock("forward")
        targets = ProFDTargets(pids=pids, masks=masks, visibility=visibility,
                               patch_labels=core.patch_labels(masks))
        with self._autocast():
            losses = self.criterion(outputs, targets)
            losses.update(core.memory.losses(outputs.global_bn, outputs.concat_bn, pids))  # PCL terms last
        total = sum(losses.values())
        # one device-to-host copy for the log and the guard
        values = dict(zip([*losses, "loss"], torch.stack([*losses.values(), total]).detach().tolist()))
        self._check_finite(values)
        clock("losses")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
        else:
            total.backward()
        clock("backward")
        if self.grad_clip > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(core.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        clock("optimizer")
        core.memory.update(outputs.global_bn, outputs.concat_bn, pids)
        clock("memory_update")
        return values


class SoftmaxEngine(LoopMixin, ImageSoftmaxEngine):
    """torchreid's softmax engine with the plugin's evaluation, checkpoints and resume."""

    def __init__(self, *args, seed: int = 0, checkpoint_freq: int = 10, config: Optional[CfgNode] = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.seed, self.checkpoint_freq, self.config = seed, checkpoint_freq, config


class TripletEngine(LoopMixin, ImageTripletEngine):
    """torchreid's triplet engine with the plugin's evaluation, checkpoints and resume."""

    def __init__(self, *args, seed: int = 0, checkpoint_freq: int = 10, config: Optional[CfgNode] = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.seed, self.checkpoint_freq, self.config = seed, checkpoint_freq, config


def warmup_multi_step_lambda(milestones: Sequence[int], gamma: float, warmup_epochs: int,
                             warmup_factor: float):
    """Official ProFD schedule factor (per epoch): linear warm-up from ``warmup_factor`` over
    ``warmup_epochs`` epochs, times ``gamma`` at each milestone."""
    milestones = sorted(int(m) for m in milestones)

    def factor(epoch: int) -> float:
        warm = 1.0
        if epoch < warmup_epochs:
            alpha = epoch / warmup_epochs
            warm = warmup_factor * (1 - alpha) + alpha
        return warm * gamma ** sum(1 for m in milestones if m <= epoch)

    return factor


__all__ = [
    "ProFDEngine", "SoftmaxEngine", "TripletEngine", "NonFiniteLossError", "warmup_multi_step_lambda",
    "seed_everything",
]
