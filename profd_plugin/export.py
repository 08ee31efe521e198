"""Export a trained ProFD for deployment: ONNX (onnxruntime, TensorRT) and TorchScript (libtorch).

The exported graph is the model's own eval-mode :meth:`ProFD.forward
<profd_plugin.modeling.profd.ProFD.forward>` (no second implementation that could drift), run by
:class:`ProFDInference` with the prompt set baked in as a constant: the prompt features do not depend on
the image, so the CLIP text encoder, the prompt context and the training-only heads (identity
classifiers, concat BNNeck, memory banks) are not part of the graph.

Contract of an exported file (also in its JSON sidecar ``FILE.json``, see :mod:`profd_plugin.export_files`)::

    input   images       float32 (N, 3, H, W), RGB, resized to the trained (H, W) = (data.height,
                         data.width) and normalised: (pixel / 255 - data.norm_mean) / data.norm_std
                         (0.5 / 0.5 for ProFD: neither CLIP's nor ImageNet's values)
    outputs global       (N, D)     BNNeck global feature        = ProFDEmbeddings.global_feat
            parts        (N, K, D)  per-part BN part features    = ProFDEmbeddings.part_feats
            visibility   (N, K)     thresholded test visibility  = ProFDEmbeddings.visibility

Normalisation stays outside the graph, as in evaluation (``data/transforms.py``): the graph is exactly the
model, and any pre-processing pipeline (torchvision, OpenCV, a tracker's embedder) that already resizes and
normalises feeds it unchanged. N is any batch size (``batch=None``, "dynamic") or a fixed one; H and W are
always the trained size, so the positional grid is used as trained and no resampling is traced.

Shape shorthand: N batch, K parts, D embedding width, Q prompt set size, H x W image size.
"""
from __future__ import annotations

import io
import logging
import warnings
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .errors import ProFDError
from .modeling.profd import ProFD

__all__ = ["FORMATS", "INPUT_NAME", "OUTPUT_NAMES", "PARITY_TOLERANCE", "ExportError", "FixedPromptSet",
           "ProFDInference", "export_onnx", "export_torchscript", "load_runner", "onnx_opset", "parity_check",
           "random_images", "require_onnx", "max_opset", "ort_version"]

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "images"
OUTPUT_NAMES = ("global", "parts", "visibility")
CHANNELS = 3
#: batch of the example input a dynamic-batch graph is exported / traced with: torch.export specialises
#: sizes 0 and 1, so a symbolic batch needs an example of at least 2
EXAMPLE_BATCH = 2
#: batches a dynamic-batch export is checked at: both differ from EXAMPLE_BATCH, one is the edge case 1
DYNAMIC_CHECK_BATCHES = (1, 3)
#: largest max abs difference on any output accepted between an exported file and PyTorch (fp32)
PARITY_TOLERANCE = 1e-4
#: seed of the random parity-check images (the check is reproducible)
PARITY_SEED = 0
#: the submodules ProFD's eval forward never reads: dropped from the inference view (and the file)
_TRAINING_ONLY = ("classifier", "bnneck_concat", "memory")
#: loggers of the ONNX toolchain that report routine optimiser steps as warnings during an export
_ONNX_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")
ORT_PROVIDER = "CPUExecutionProvider"


class ExportError(ProFDError, RuntimeError):
    """An export that cannot run (missing extra, bad option) or whose file does not reproduce the model."""


class FixedPromptSet(nn.Module):
    """Stands in for :class:`~profd_plugin.modeling.prompts.PartPromptLearner` at inference.

    Holds the (Q, D) prompt set ``[background, (foreground), parts]`` computed once by the learner, as a
    buffer (a constant of the exported graph), and answers the two questions the model asks its learner.

    Args:
        learner: the trained prompt learner (its text encoder is run once, without gradients).
    """

    def __init__(self, learner: nn.Module) -> None:
        super().__init__()
        was_training = learner.training
        learner.eval()
        try:
            with torch.no_grad():
                prompts = learner().detach().clone()  # (Q, D)
        finally:
            learner.train(was_training)
        self.register_buffer("prompts", prompts)
        self.has_foreground = bool(learner.has_foreground)
        self.num_parts = int(learner.num_parts)
        self._alignment_index = list(learner.alignment_index())

    def alignment_index(self) -> List[int]:
        """Indices of [background, parts] in the prompt set (as the learner's)."""
        return list(self._alignment_index)

    def forward(self) -> Tensor:
        """(Q, D) prompt set."""
        return self.prompts


def _inference_view(model: ProFD) -> ProFD:
    """A shallow copy of ``model`` that shares its weights, with the prompt learner replaced by a
    :class:`FixedPromptSet` and the training-only submodules removed. ``model`` itself is not changed."""
    view = object.__new__(type(model))
    view.__dict__.update(model.__dict__)
    view._modules = dict(model._modules)  # own submodule table; the submodules (and weights) are shared
    view.prompt_learner = FixedPromptSet(model.prompt_learner)
    for name in _TRAINING_ONLY:
        setattr(view, name, None)
    view.training = False
    return view


class ProFDInference(nn.Module):
    """``images (N, 3, H, W) -> (global (N, D), parts (N, K, D), visibility (N, K))``, exportable.

    Runs ``ProFD.forward`` in eval mode on a view of ``model`` with the prompt set as a constant, so the
    outputs equal ``model(images)`` (:class:`~profd_plugin.modeling.outputs.ProFDEmbeddings`) exactly.
    The input is already resized and normalised (module docstring); its size must be the built size.
    The prompt set is taken from the model's weights when the module is built: build a new module after
    changing them.

    Args:
        model: a ProFD model (any :class:`ProFD` subclass; its own ``forward`` is not used). It is put in
            eval mode; its weights are shared, not copied.
    """

    def __init__(self, model: ProFD) -> None:
        super().__init__()
        if not isinstance(model, ProFD):
            raise TypeError(f"ProFDInference needs a ProFD model, got {type(model).__name__}")
        model.eval()
        self.profd = _inference_view(model)
        self.image_size: Tuple[int, int] = tuple(model.backbone.image_size)
        self.num_parts, self.embed_dim = int(model.num_parts), int(model.embed_dim)
        self.eval()

    def train(self, mode: bool = True) -> "ProFDInference":
        """Inference only: stays in eval mode."""
        return super().train(False)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Args: images (N, 3, H, W) normalised. Returns global (N, D), parts (N, K, D), visibility (N, K)."""
        emb = ProFD.forward(self.profd, images)
        return emb.global_feat, emb.part_feats, emb.visibility


def random_images(batch: int, image_size: Tuple[int, int], mean: Sequence[float], std: Sequence[float],
                  seed: int = PARITY_SEED) -> Tensor:
    """(batch, 3, H, W) normalised images of uniformly random pixels (the parity-check input)."""
    gen = torch.Generator().manual_seed(seed + batch)
    pixels = torch.rand(batch, CHANNELS, *image_size, generator=gen)  # (N, 3, H, W) in [0, 1]
    return (pixels - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def _example(module: ProFDInference, batch: Optional[int]) -> Tensor:
    return torch.zeros(batch or EXAMPLE_BATCH, CHANNELS, *module.image_size)


def require_onnx() -> None:
    """Raise :class:`ExportError` (one line) unless the ONNX export extra is installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExportError(f"ONNX export needs onnx, onnxscript and onnxruntime ({err}): "
                          "pip install 'profd_plugin[export]'") from None


@contextmanager
def _quiet_onnx_toolchain() -> Iterator[None]:
    """Keep routine exporter chatter (optimiser notes logged as warnings) off the console for one export."""
    loggers = [logging.getLogger(name) for name in _ONNX_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(module: ProFDInference, *, batch: Optional[int] = None, opset: Optional[int] = None) -> bytes:
    """Export with ``torch.onnx.export(dynamo=True)`` (the torch.export-based exporter) to ONNX bytes.

    Args:
        module: the inference module.
        batch: None = dynamic batch (symbolic first input / output dimension ``batch``), else fixed.
        opset: ONNX opset (default: torch's recommended one); below 18 torch converts from 18.

    Returns:
        The serialised ONNX model, weights inside (no external data file), checked by ``onnx.checker``.
    """
    require_onnx()
    import onnx

    dynamic = None
    if batch is None:
        dim = torch.export.Dim("batch", min=1)
        dynamic = {INPUT_NAME: {0: dim}}
    with torch.no_grad(), _quiet_onnx_toolchain():
        program = torch.onnx.export(module, (_example(module, batch),), None, dynamo=True,
                                    input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                    dynamic_shapes=dynamic, opset_version=opset, external_data=False,
                                    verbose=False)
    proto = program.model_proto
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0]
        raise ExportError(f"the exported ONNX graph (opset {opset or 'default'}) is not valid ONNX: {first}; "
                          "try another --opset") from None
    return proto.SerializeToString()


def export_torchscript(module: ProFDInference, *, batch: Optional[int] = None) -> bytes:
    """Trace with ``torch.jit.trace`` to a TorchScript archive (bytes).

    The trace records the batch dimension symbolically, so the module runs at any batch size (``batch``
    only sets the example batch; the parity check verifies other batch sizes for a dynamic export).

    Args:
        module: the inference module.
        batch: example batch (None: :data:`EXAMPLE_BATCH`).
    """
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated in torch >= 2.10 but still serves libtorch (C++) deployments.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
        # nn.MultiheadAttention's shape assertions and the image size read as Python values: the image
        # size is fixed by design; the batch size is checked by the parity check at other batches.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(module, (_example(module, batch),), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


Runner = Callable[[Tensor], Tuple[Tensor, ...]]


def _onnx_runner(data: bytes) -> Runner:
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=[ORT_PROVIDER])
    inputs = [i.name for i in session.get_inputs()]
    outputs = tuple(o.name for o in session.get_outputs())
    if inputs != [INPUT_NAME] or outputs != OUTPUT_NAMES:
        raise ExportError(f"the ONNX graph has inputs {inputs} and outputs {list(outputs)}, expected "
                          f"[{INPUT_NAME!r}] and {list(OUTPUT_NAMES)}")

    def run(images: Tensor) -> Tuple[Tensor, ...]:
        values = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.numpy()})
        return tuple(torch.from_numpy(v) for v in values)

    return run


def _torchscript_runner(data: bytes) -> Runner:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")

    def run(images: Tensor) -> Tuple[Tensor, ...]:
        with torch.no_grad():
            return tuple(loaded(images))

    return run


def load_runner(data: bytes, fmt: str) -> Runner:
    """A CPU runner of exported bytes: onnxruntime (``CPUExecutionProvider``) or ``torch.jit.load``."""
    if fmt == "onnx":
        require_onnx()
        return _onnx_runner(data)
    if fmt == "torchscript":
        return _torchscript_runner(data)
    raise ExportError(f"unknown export format '{fmt}' (use {' or '.join(FORMATS)})")


def parity_check(module: ProFDInference, runner: Runner, *, batches: Sequence[int], mean: Sequence[float],
                 std: Sequence[float]) -> Dict[int, Dict[str, float]]:
    """Max abs difference between ``runner`` and PyTorch (``module``) on every output, per batch size.

    Inputs are :func:`random_images` (reproducible). Returns ``{batch: {output name: max abs diff}}``.

    Raises:
        ExportError: an output of the wrong shape or dtype.
    """
    report: Dict[int, Dict[str, float]] = {}
    for batch in batches:
        images = random_images(batch, module.image_size, mean, std)  # (N, 3, H, W)
        with torch.no_grad():
            expected = module(images)
        got = runner(images)
        diffs = {}
        for name, ref, out in zip(OUTPUT_NAMES, expected, got):
            if tuple(out.shape) != tuple(ref.shape) or out.dtype != ref.dtype:
                raise ExportError(f"exported output '{name}' at batch {batch} has shape {tuple(out.shape)} "
                                  f"{out.dtype}, PyTorch's is {tuple(ref.shape)} {ref.dtype}")
            diffs[name] = float((out - ref).abs().max())
        report[batch] = diffs
    return report


def onnx_opset(data: bytes) -> int:
    """The default-domain opset of serialised ONNX bytes."""
    import onnx

    proto = onnx.load_model_from_string(data)
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def max_opset() -> int:
    """The newest ONNX opset the installed onnx package knows."""
    import onnx.defs

    return int(onnx.defs.onnx_opset_version())


def ort_version() -> str:
    """The installed onnxruntime version."""
    import onnxruntime

    return onnxruntime.__version__
