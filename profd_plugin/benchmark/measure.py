"""Efficiency figures of a benchmark run: parameters, inference throughput, peak memory.

* parameters: those used at inference (ProFD: :meth:`ProFD.num_inference_params`, without the text
  encoder whose prompt features are cached, and without training-only heads; torchreid built-ins:
  everything except the identity ``classifier``), and the total;
* inference: images/s of the model's eval forward on random ``(B, 3, H, W)`` batches (no data loading,
  no distance or ranking), after one untimed warm-up batch;
* peak memory: on CUDA ``torch.cuda.max_memory_allocated`` since :meth:`PeakMemory.reset`; on CPU the
  process's peak resident set (VmHWM, reset through ``/proc/self/clear_refs``; where that is not
  allowed, the peak since the process started). The CPU figure includes Python and torch themselves
  (about 0.5 GB) and not the data-loader worker processes.
"""
from __future__ import annotations

import resource
import sys
import time

import torch
from torch import nn

__all__ = ["inference_params", "total_params", "inference_images_per_s", "PeakMemory", "status_kib",
           "synchronize"]

CLASSIFIER_PREFIX = "classifier."  # torchreid built-ins: the identity classifier, unused at inference
MIN_TIME_S = 1.0  # time at least this long ...
MIN_ITERS = 3  # ... and at least this many batches
MIB = 2 ** 20


def inference_params(model: nn.Module) -> int:
    """Parameters used at inference (see the module docstring)."""
    model = getattr(model, "module", model)
    if hasattr(model, "num_inference_params"):
        return int(model.num_inference_params())
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(CLASSIFIER_PREFIX))


def total_params(model: nn.Module) -> int:
    """Every parameter of the model."""
    return sum(p.numel() for p in getattr(model, "module", model).parameters())


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously) before a clock is read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def inference_images_per_s(model: nn.Module, *, batch_size: int, height: int, width: int,
                           device: torch.device, min_time_s: float = MIN_TIME_S, min_iters: int = MIN_ITERS,
                           seed: int = 0) -> float:
    """Images per second of ``model``'s eval forward on random batches of ``batch_size``.

    The model is put in eval mode and back in its previous mode afterwards.
    """
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    try:
        gen = torch.Generator().manual_seed(seed)
        images = torch.randn(batch_size, 3, height, width, generator=gen).to(device)  # (B, 3, H, W)
        model(images)  # warm-up: caches (prompt features, cuDNN algorithms), allocator
        synchronize(device)
        iters, start = 0, time.perf_counter()
        while iters < min_iters or time.perf_counter() - start < min_time_s:
            model(images)
            synchronize(device)
            iters += 1
        return iters * batch_size / (time.perf_counter() - start)
    finally:
        model.train(was_training)


def status_kib(field: str) -> int:
    """A VmXXX field of /proc/self/status in KiB (Linux): VmRSS now, VmHWM the peak so far."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Peak memory of a stretch of work in MiB (see the module docstring).

    Args:
        device: the training device.
    """

    def __init__(self, *, device: torch.device) -> None:
        self.device = device
        self.since_start = False  # True when the CPU peak could not be reset (process-lifetime peak)

    def reset(self) -> None:
        """Start a new measurement."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # "5" resets the peak resident set VmHWM (Linux >= 4.0)
        except OSError:
            self.since_start = True

    def peak_mib(self) -> float:
        """The peak since :meth:`reset`."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / MIB
        try:
            return status_kib("VmHWM") / 1024
        except (OSError, KeyError):  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.since_start = True
            return peak / (MIB if sys.platform == "darwin" else 1024)
