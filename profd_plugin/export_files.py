"""Checkpoint -> exported file + JSON sidecar (``tools/export.py``): checked, parity-tested, atomic.

:func:`export_checkpoint` rebuilds the exact model from a plugin checkpoint, exports it with
:mod:`profd_plugin.export`, runs the exported bytes against PyTorch and only then writes ``FILE`` and
``FILE.json`` (each atomically, :mod:`profd_plugin.fileio`); any error leaves nothing written.

The sidecar says what a deployment needs without this package: the input contract (size, channel order,
layout, mean, std: the pre-processing of evaluation, ``data/transforms.py``), the output names and shapes,
the distance to compare the outputs with (paper Eq. 14, as ``profd.test.*`` of the checkpoint's config)
and where the file came from (checkpoint path, SHA-256, epoch; the parity check's numbers). Every key is
listed in ``docs/EXPORT.md``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import os.path as osp
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from yacs.config import CfgNode

from .export import (
    DYNAMIC_CHECK_BATCHES,
    FORMATS,
    INPUT_NAME,
    ORT_PROVIDER,
    OUTPUT_NAMES,
    PARITY_TOLERANCE,
    ExportError,
    ProFDInference,
    export_onnx,
    export_torchscript,
    load_runner,
    max_opset,
    onnx_opset,
    ort_version,
    parity_check,
    require_onnx,
)
from .fileio import atomic_write

__all__ = ["SIDECAR_VERSION", "SIDECAR_SUFFIX", "DYNAMIC", "MIN_OPSET", "ExportResult", "export_checkpoint",
           "check_output", "check_batches", "build_sidecar", "file_sha256", "distance_spec"]

logger = logging.getLogger(__name__)

SIDECAR_VERSION = 1
SIDECAR_SUFFIX = ".json"
#: the ``batch`` value of a dynamic-batch export (and the ``--batch`` value that asks for it)
DYNAMIC = "dynamic"
#: the name of the symbolic batch dimension in the shapes
_BATCH_DIM = "batch"
_FLIP_NOTE = ("evaluation averaged each output with the output of the horizontally flipped image "
              "(profd.test.flip); the graph has no flip: run both and average to match evaluation")
#: lowest ONNX opset offered: LayerNormalization is an ONNX operator from opset 17 on
MIN_OPSET = 17
_HASH_CHUNK = 1 << 20  # bytes read at a time when hashing the checkpoint
#: d_k of one compared feature (unit vectors q^_k, g^_k), by profd.test.metric
_METRIC_FORMULA = {"euclidean": "d_k = ||q^_k - g^_k||_2 = sqrt(2 - 2 cos_k)", "cosine": "d_k = 1 - cos_k"}
#: how the K + 1 per-feature distances combine, by profd.test.distance
_MODE_FORMULA = {
    "visibility": "D = sum_k w_k d_k / sum_k w_k over k = 0 (global) .. K (parts), w_0 = 1, "
                  "w_k = visibility_q[k] * visibility_g[k]",
    "global": "D = d_0 (global feature only; parts and visibility unused)",
    "parts": "D = sum_k w_k d_k / sum_k w_k over the K parts, w_k = visibility_q[k] * visibility_g[k]; "
             "a pair with no commonly visible part gets the plain mean of its K part distances",
}
_VISIBILITY_RULE = {
    "softmax": "v = softmax over the K parts of sigmoid(logit_k) / temperature; v_k < threshold -> 0",
    "sigmoid": "v = sigmoid(logit_k); v_k < threshold -> 0",
}


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def distance_spec(cfg: CfgNode) -> Dict[str, Any]:
    """How to compare two images' outputs: mode, metric, weights and the visibility rule of ``cfg``."""
    t, v = cfg.profd.test, cfg.profd.visibility
    return {
        "mode": t.distance,
        "metric": t.metric,
        "normalize": "L2-normalise global and each of the K parts before comparing (the outputs are not)",
        "feature_distance": _METRIC_FORMULA[t.metric],
        "combination": _MODE_FORMULA[t.distance],
        "weights": {"global": 1.0, "part_k": "visibility_q[k] * visibility_g[k]"},
        "visibility": {"test_mode": v.test_mode, "temperature": float(v.temperature),
                       "threshold": float(v.threshold), "rule": _VISIBILITY_RULE[v.test_mode],
                       "applied_in_graph": True},
        "python": f"profd_plugin.metrics.visibility_aware_distance(q_global, q_parts, q_visibility, "
                  f"g_global, g_parts, g_visibility, metric='{t.metric}', mode='{t.distance}')",
    }


def _versions(fmt: str) -> Dict[str, str]:
    from . import __version__

    out = {"profd_plugin": __version__, "torch": torch.__version__}
    if fmt == "onnx":
        import onnx
        import onnxruntime
        import onnxscript

        out.update(onnx=onnx.__version__, onnxscript=onnxscript.__version__,
                   onnxruntime=onnxruntime.__version__)
    return out


def build_sidecar(*, cfg: CfgNode, ckpt: Mapping[str, Any], checkpoint: str, output: str, fmt: str,
                  batch: Optional[int], opset: Optional[int], num_parts: int, embed_dim: int,
                  parity: Mapping[int, Mapping[str, float]], tolerance: float,
                  runtime: str) -> Dict[str, Any]:
    """The sidecar dict of an export (see the module docstring; ``docs/EXPORT.md`` lists every key).

    Args:
        cfg: the checkpoint's config (``build_from_checkpoint``).
        ckpt: the checkpoint dict (epoch, num_classes).
        checkpoint: its path.
        output: the exported file's path.
        fmt: ``onnx`` | ``torchscript``.
        batch: None (dynamic) or the fixed batch.
        opset: the ONNX opset of the file (ONNX only).
        num_parts, embed_dim: K and D.
        parity: ``{batch: {output: max abs difference}}`` of the parity check.
        tolerance: the largest difference the parity check accepted.
        runtime: what ran the exported file in the parity check.
    """
    n = _BATCH_DIM if batch is None else int(batch)
    height, width = int(cfg.data.height), int(cfg.data.width)
    shapes = {"global": [n, embed_dim], "parts": [n, num_parts, embed_dim], "visibility": [n, num_parts]}
    from .data.masks import part_names

    return {
        "sidecar_version": SIDECAR_VERSION,
        "format": fmt,
        "file": osp.basename(output),
        "opset": opset,
        "batch": DYNAMIC if batch is None else int(batch),
        "image_size": [height, width],
        "input": {
            "name": INPUT_NAME, "shape": [n, 3, height, width], "dtype": "float32", "layout": "NCHW",
            "channel_order": "RGB", "normalized": True,
            "mean": [float(x) for x in cfg.data.norm_mean], "std": [float(x) for x in cfg.data.norm_std],
            "preprocess": f"resize to {height}x{width} (bilinear, antialiased, no padding), scale to [0, 1] "
                          f"(pixel / 255), then (x - mean) / std per channel",
        },
        "outputs": {name: {"shape": shapes[name], "dtype": "float32"} for name in OUTPUT_NAMES},
        "part_names": list(part_names(cfg.profd.masks.grouping)),
        "distance": distance_spec(cfg),
        "test_time_flip": {"enabled": bool(cfg.profd.test.flip), "note": _FLIP_NOTE} if cfg.profd.test.flip
        else {"enabled": False},
        "checkpoint": {
            "path": osp.abspath(checkpoint), "sha256": file_sha256(checkpoint),
            "epoch": int(ckpt.get("epoch", 0)), "model_name": cfg.model.name, "clip": cfg.profd.clip.name,
            "stride": int(cfg.profd.clip.stride), "attention": cfg.profd.decoder.attention,
        },
        "parity": {
            "runtime": runtime, "tolerance": float(tolerance),
            "batches": [int(b) for b in parity],
            "max_abs_diff": {str(b): dict(d) for b, d in parity.items()},
        },
        "versions": _versions(fmt),
    }


# ---------------------------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote.

    Attributes:
        output: the exported file (absolute path).
        sidecar: its JSON sidecar, ``output + '.json'``.
        metadata: the sidecar's content.
        parity: ``{batch: {output name: max abs difference}}`` of the exported file against PyTorch.
    """

    output: str
    sidecar: str
    metadata: Dict[str, Any]
    parity: Dict[int, Dict[str, float]]


def check_batches(batch: Optional[int]) -> Tuple[int, ...]:
    """Batch sizes the parity check runs at: :data:`DYNAMIC_CHECK_BATCHES`, or the fixed batch."""
    return DYNAMIC_CHECK_BATCHES if batch is None else (int(batch),)


def check_output(output: str, checkpoint: str) -> str:
    """The absolute output path, or :class:`ExportError` naming it when it cannot be written safely.

    Checked before anything is exported: not a folder, not the checkpoint itself (for the file and its
    ``.json`` sidecar), and the nearest existing folder above it is a writable folder.
    """
    if not output:
        raise ExportError("no --output path given")
    path = osp.abspath(osp.expanduser(output))
    for target in (path, path + SIDECAR_SUFFIX):
        if osp.isdir(target):
            raise ExportError(f"output {target} is a folder: give a file path, e.g. {path}/model.onnx")
        if osp.exists(target) and osp.exists(checkpoint) and osp.samefile(target, checkpoint):
            raise ExportError(f"output {target} is the checkpoint itself: choose another file")
    existing = osp.dirname(path)
    while not osp.exists(existing):
        existing = osp.dirname(existing)
    if not osp.isdir(existing):
        raise ExportError(f"cannot write {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {path}: folder {existing} is not writable")
    return path


def _check_options(fmt: str, batch: Optional[int], opset: Optional[int], tolerance: float) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}' (use {' or '.join(FORMATS)})")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ExportError(f"batch must be 'dynamic' or a positive integer, got {batch!r}")
    if opset is not None and fmt != "onnx":
        raise ExportError(f"an opset applies to ONNX only, not to {fmt}")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET):
        raise ExportError(f"ONNX opset must be an integer >= {MIN_OPSET} (LayerNormalization), got {opset!r}")
    if not 0.0 <= tolerance < math.inf:
        raise ExportError(f"parity tolerance must be a finite number >= 0, got {tolerance!r}")


def _first_failure(parity: Mapping[int, Mapping[str, float]], tolerance: float) -> Optional[str]:
    for batch, diffs in parity.items():
        for name, diff in diffs.items():
            if not diff <= tolerance:  # NaN fails too
                return f"output '{name}' differs from PyTorch by up to {diff:.3g} at batch {batch}"
    return None


def _write(output: str, data: bytes, metadata: Mapping[str, Any]) -> str:
    """Write the file and its sidecar, each atomically; the sidecar is committed right after the file."""
    sidecar = output + SIDECAR_SUFFIX
    text = json.dumps(metadata, indent=2) + "\n"

    def write_both(f) -> None:
        f.write(text)  # the sidecar's temporary file, committed only once the exported file is in place
        atomic_write(output, lambda g: g.write(data))

    try:
        atomic_write(sidecar, write_both, binary=False)
    except OSError as err:
        raise ExportError(f"cannot write {output}: {err.strerror or err}") from None
    return sidecar


def export_checkpoint(checkpoint: str, *, fmt: str, output: str, batch: Optional[int] = None,
                      opset: Optional[int] = None, tolerance: float = PARITY_TOLERANCE) -> ExportResult:
    """Export a plugin checkpoint's ProFD to ``output`` (+ ``output.json``) after a parity check.

    Order: options and output path are checked, the exact model is rebuilt from the checkpoint
    (:func:`~profd_plugin.checkpoint.build_from_checkpoint`), exported to memory, run by onnxruntime (CPU)
    or ``torch.jit.load`` against PyTorch (:func:`parity_check`), and only then written atomically.

    Args:
        checkpoint: a checkpoint written by the plugin (``model.pth.tar-N`` of a ``tools/main.py`` run).
        fmt: ``onnx`` | ``torchscript``.
        output: the file to write.
        batch: None = dynamic batch, else a fixed batch size.
        opset: ONNX opset (default: torch's recommended; >= :data:`MIN_OPSET`).
        tolerance: the largest max abs difference accepted on any output.

    Raises:
        CheckpointError: missing, corrupt or non-ProFD checkpoint.
        ExportError: bad option, unwritable output, missing ONNX extra, a failed parity check. In every
            error case nothing is written.
    """
    from .checkpoint import build_from_checkpoint

    _check_options(fmt, batch, opset, tolerance)
    path = check_output(output, checkpoint)
    if fmt == "onnx":
        require_onnx()
        if opset is not None and opset > max_opset():
            raise ExportError(f"ONNX opset {opset} is newer than the installed onnx knows ({max_opset()})")
    model, cfg, ckpt = build_from_checkpoint(checkpoint)
    module = ProFDInference(model)
    if fmt == "onnx":
        data = export_onnx(module, batch=batch, opset=opset)
        actual_opset = onnx_opset(data)
        if opset is not None and actual_opset != opset:
            raise ExportError(f"torch could not convert the graph to ONNX opset {opset} (it has opset "
                              f"{actual_opset}); use --opset {actual_opset} or leave it out")
        runtime = f"onnxruntime {ort_version()} {ORT_PROVIDER}"
    else:
        data, actual_opset = export_torchscript(module, batch=batch), None
        runtime = f"torch.jit.load (torch {torch.__version__}, CPU)"
    parity = parity_check(module, load_runner(data, fmt), batches=check_batches(batch),
                          mean=cfg.data.norm_mean, std=cfg.data.norm_std)
    failure = _first_failure(parity, tolerance)
    if failure:
        raise ExportError(f"parity check failed: {failure} (tolerance {tolerance:g}); nothing written")
    metadata = build_sidecar(cfg=cfg, ckpt=ckpt, checkpoint=checkpoint, output=path, fmt=fmt, batch=batch,
                             opset=actual_opset, num_parts=module.num_parts, embed_dim=module.embed_dim,
                             parity=parity, tolerance=tolerance, runtime=runtime)
    sidecar = _write(path, data, metadata)
    logger.info("exported %s to %s (%d bytes) and %s", checkpoint, path, len(data), sidecar)
    return ExportResult(output=path, sidecar=sidecar, metadata=metadata, parity=parity)
