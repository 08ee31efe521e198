"""Features of a trained ProFD for any images: :class:`ProFDExtractor` and its result :class:`ProFDFeatures`.

The extractor rebuilds the exact model of a checkpoint from the config stored in it
(:func:`~profd_plugin.checkpoint.build_from_checkpoint`) and computes features exactly as evaluation does:
the same image reader and test transform (``data.datamanager.read_image``, ``data.transforms.
build_test_transform``: bilinear antialiased resize to the trained size, then the checkpoint's mean/std),
fp32, the checkpoint's ``profd.test.flip``, and the same batch forward (``evaluation.eval_forward``).
Distances and rankings use the visibility-aware distance (paper Eq. 14) with the checkpoint's
``profd.test.metric`` and ``profd.test.distance``; large galleries can be searched through a faiss
candidate index (:mod:`profd_plugin.metrics.search`). See ``docs/INFERENCE.md``.

Shape shorthand: N images, K parts, D feature width, h x w patch grid of the trained size.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from tqdm import tqdm

from .checkpoint import build_from_checkpoint
from .data.datamanager import pil_to_image, read_image
from .data.masks import part_names
from .data.transforms import build_test_transform
from .errors import CheckpointError
from .evaluation import eval_forward
from .metrics import visibility_aware_distance
from .metrics.search import CandidateIndex, Ranking, exact_topk
from .runs import latest_checkpoint

__all__ = ["ProFDExtractor", "ProFDFeatures", "to_image", "Ranking"]

logger = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, Tensor]
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: channel counts accepted for arrays (HxWxC) and tensors (CxHxW): grey, RGB, and (arrays) RGBA
_ARRAY_CHANNELS = (1, 3, 4)
_TENSOR_CHANNELS = (1, 3)
#: candidates re-scored per query by default with an index: this many times k (see docs/INFERENCE.md)
CANDIDATES_PER_RESULT = 5


@dataclass
class ProFDFeatures:
    """Test-time features of N images (CPU, float32), as evaluation computes them.

    Attributes:
        global_feat: (N, D) BNNeck global feature (not L2-normalised).
        part_feats: (N, K, D) per-part BN features (not L2-normalised).
        visibility: (N, K) test-time part visibility in [0, 1] (below ``profd.visibility.threshold`` = 0).
        spa_maps: (N, K, h, w) spatial-aware attention of each part query over the patch grid, averaged
            over decoder layers (each map sums to 1); only with ``extract(..., attention=True)`` and a
            decoder with an SPA branch.
        alignment_maps: (N, K, h, w) per-patch probability of each part from the alignment scores
            (softmax over background + K parts of Eq. 5, background dropped); with ``attention=True``.
    """

    global_feat: Tensor
    part_feats: Tensor
    visibility: Tensor
    spa_maps: Optional[Tensor] = None
    alignment_maps: Optional[Tensor] = None

    def __len__(self) -> int:
        return int(self.global_feat.shape[0])

    def __getitem__(self, rows: Union[int, slice, Sequence[int], Tensor]) -> "ProFDFeatures":
        """The features of some images; an int keeps the image dimension (N = 1)."""
        rows = [rows] if isinstance(rows, int) else rows
        return ProFDFeatures(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[rows]
                                for f in fields(self)})

    @classmethod
    def cat(cls, items: Sequence["ProFDFeatures"]) -> "ProFDFeatures":
        """Concatenate along the images (optional maps kept only if every item has them)."""
        if not items:
            raise ValueError("ProFDFeatures.cat needs at least one item")
        values = {}
        for f in fields(cls):
            parts = [getattr(x, f.name) for x in items]
            values[f.name] = None if any(p is None for p in parts) else torch.cat(parts)
        return cls(**values)

    def embedding(self) -> Tensor:
        """(N, (K+1) D) one vector per image, ``[g/|g|, v_1 p_1/|p_1|, ...]``: what torchreid's
        ``FeatureExtractor`` returns for a ProFD variant (dot product = visibility-weighted similarity)."""
        from .modeling.build import torchreid_embedding

        return torchreid_embedding(self)


def to_image(image: ImageInput) -> tv_tensors.Image:
    """One input as the RGB uint8 (or float) ``(3, h, w)`` image the test transform takes.

    Accepted: a file path (read by evaluation's reader); a PIL image of any mode (``convert('RGB')``: grey
    replicated, alpha dropped, palettes expanded); an HxW or HxWxC uint8 numpy array in RGB(A) channel
    order (C = 1, 3 or 4); a CxHxW tensor (C = 1 or 3), uint8 in [0, 255] or float in [0, 1]. A uint8 input
    follows evaluation's path exactly; a float tensor skips the uint8 rounding of the resize.

    Raises:
        DatasetError: an unreadable file (names it). ValueError / TypeError: an unsupported array or type.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(os.fspath(image))
    if isinstance(image, Image.Image):
        return pil_to_image(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
                image.ndim == 3 and image.shape[2] not in _ARRAY_CHANNELS):
            raise ValueError(f"numpy images must be uint8 HxW or HxWxC with C in {_ARRAY_CHANNELS} (RGB "
                             f"order), got {image.dtype} {image.shape}")
        grey = image.ndim == 3 and image.shape[2] == 1
        return pil_to_image(Image.fromarray(image[:, :, 0] if grey else image))
    if torch.is_tensor(image):
        if image.ndim != 3 or image.shape[0] not in _TENSOR_CHANNELS:
            raise ValueError(f"tensor images must be CxHxW with C in {_TENSOR_CHANNELS}, got "
                             f"{tuple(image.shape)}")
        if image.is_floating_point():
            if image.numel() and (float(image.min()) < 0 or float(image.max()) > 1):
                raise ValueError("float tensor images must be in [0, 1] (uint8 tensors in [0, 255])")
        elif image.dtype != torch.uint8:
            raise ValueError(f"tensor images must be uint8 or float, got {image.dtype}")
        return tv_tensors.Image(image.detach().cpu().expand(3, -1, -1).contiguous())
    raise TypeError(f"unsupported image type {type(image).__name__}: give a path, a PIL image, an HxWxC "
                    "uint8 numpy array or a CxHxW tensor")


def _as_list(images: Any) -> List[ImageInput]:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
        return [images]
    if torch.is_tensor(images):
        return [images] if images.ndim == 3 else list(images)  # (N, C, H, W): N images
    return list(images)


class _Inputs(Dataset):
    """Inputs -> normalised (3, H, W) tensors with the test transform."""

    def __init__(self, images: List[ImageInput], transform: Any) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.transform(to_image(self.images[index])).as_subclass(Tensor)


class _FirstCallMaps:
    """The model's eval forward for :func:`eval_forward`; keeps the maps of its first (unflipped) call."""

    def __init__(self, model: torch.nn.Module, attention: bool) -> None:
        self.model, self.attention = model, attention
        self.spa: Optional[Tensor] = None
        self.patches: Optional[Tensor] = None

    def _hook(self, module, args, output) -> None:
        if self.patches is None:
            self.patches = output[1]  # (N, L, D) patch features of the backbone

    def __call__(self, images: Tensor) -> Any:
        if not self.attention:
            return self.model(images)
        handle = self.model.backbone.register_forward_hook(self._hook)
        try:
            emb = self.model(images, return_attention=True)
        finally:
            handle.remove()
        if self.spa is None and emb.attention is not None:
            self.spa = emb.attention
        return replace(emb, attention=None)  # flip averaging covers the features, never the maps


class ProFDExtractor:
    """Features, distances and rankings of a trained ProFD, exactly as ``tools/main.py`` evaluates.

    Args:
        model: the ProFD model (eval mode is set).
        cfg: its (frozen) config: image size, normalisation, ``profd.test.*``.
        device: where the model runs.
        amp: ``None`` (fp32, as evaluation), ``"bf16"`` or ``"fp16"`` (CUDA autocast; ignored on CPU).

    Attributes:
        image_size: (H, W) every input is resized to; part_names: the K part names; metric, mode: the
        distance (``profd.test.metric`` / ``profd.test.distance``); flip: ``profd.test.flip``.
    """

    def __init__(self, *, model: torch.nn.Module, cfg: Any, device: Union[str, torch.device] = "cpu",
                 amp: Optional[str] = None) -> None:
        if amp is not None and amp not in AMP_DTYPES:
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
        self.device = torch.device(device)
        self.model, self.cfg = model.to(self.device).eval(), cfg
        self.checkpoint: Optional[str] = None  # the file, when built by from_checkpoint
        self.amp_dtype = AMP_DTYPES.get(amp) if self.device.type == "cuda" else None
        if amp is not None and self.amp_dtype is None:
            logger.warning("amp=%s is CUDA only: extracting in fp32 on %s", amp, self.device)
        d, t = cfg.data, cfg.profd.test
        self.image_size: Tuple[int, int] = (int(d.height), int(d.width))
        self.transform = build_test_transform(height=d.height, width=d.width, norm_mean=list(d.norm_mean),
                                              norm_std=list(d.norm_std))
        self.part_names = part_names(cfg.profd.masks.grouping)
        self.metric, self.mode, self.flip, self.chunk_size = t.metric, t.distance, bool(t.flip), t.chunk_size
        self.distance_device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if t.device == "auto" else t.device)

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "auto", amp: Optional[str] = None, *,
                        overrides: Sequence[str] = ()) -> "ProFDExtractor":
        """Rebuild the model of a checkpoint written by the plugin (tiny, ViT-B/16, stride 12, ...).

        Args:
            path: a checkpoint file, a run folder (its newest checkpoint) or a ``data.save_dir`` (the
                newest checkpoint of its newest training run).
            device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``...
            amp: see the class.
            overrides: ``key value`` pairs applied to the stored config (test-time keys such as
                ``profd.test.flip True`` or ``profd.visibility.test_mode sigmoid``).

        Raises:
            CheckpointError: nothing found at ``path``, or not a usable ProFD checkpoint (one line).
        """
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no checkpoint found at {os.path.abspath(os.path.expanduser(path))} "
                                  "(give a checkpoint file, a run folder or a data.save_dir)")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, cfg, _ = build_from_checkpoint(found, device=device, overrides=tuple(overrides))
        logger.info("ProFD extractor from %s (%dx%d, %s)", found, cfg.data.height, cfg.data.width, device)
        extractor = cls(model=model, cfg=cfg, device=device, amp=amp)
        extractor.checkpoint = found
        return extractor

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def extract(self, images: Any, batch_size: int = 64, attention: bool = False, *, workers: int = 0,
                progress: Optional[bool] = None) -> ProFDFeatures:
        """Features of ``images`` (one input or a sequence; see :func:`to_image` for the accepted kinds).

        Args:
            images: paths, PIL images, HxWxC uint8 RGB arrays, CxHxW tensors (or one (N, C, H, W) tensor),
                any size: each is resized to :attr:`image_size`.
            batch_size: images per forward (evaluation uses ``test.batch_size``; another batch size can
                change the last float bit).
            attention: also return ``spa_maps`` and ``alignment_maps`` (from the unflipped image).
            workers: DataLoader processes decoding and resizing the inputs.
            progress: tqdm bar; default: when there is more than one batch.

        Returns:
            :class:`ProFDFeatures` on the CPU, one row per input, in order.
        """
        items = _as_list(images)
        if not items:
            raise ValueError("extract() got no images")
        loader = DataLoader(_Inputs(items, self.transform), batch_size=batch_size, num_workers=workers,
                            pin_memory=self.device.type == "cuda")
        show = len(loader) > 1 if progress is None else progress
        out = [self._batch(batch.to(self.device, non_blocking=True), attention)
               for batch in tqdm(loader, desc="ProFD features", unit="batch", disable=not show)]
        return ProFDFeatures.cat(out)

    def _batch(self, images: Tensor, attention: bool) -> ProFDFeatures:
        forward = _FirstCallMaps(self.model, attention)
        amp = self.amp_dtype is not None
        with torch.autocast("cuda", dtype=self.amp_dtype or torch.float32, enabled=amp):
            emb = eval_forward(forward, images, self.flip)
        maps: Dict[str, Optional[Tensor]] = {"spa_maps": None, "alignment_maps": None}
        if attention:
            maps = self._maps(forward, tuple(images.shape[-2:]))
        return ProFDFeatures(emb.global_feat.float().cpu(), emb.part_feats.float().cpu(),
                             emb.visibility.float().cpu(), **maps)

    def _maps(self, forward: _FirstCallMaps, size: Tuple[int, int]) -> Dict[str, Optional[Tensor]]:
        """(N, K, h, w) SPA maps of the part queries and part probabilities of the alignment scores."""
        from .modeling.heads import alignment_scores

        model, num_parts = self.model, len(self.part_names)
        grid = model.backbone.grid_for(size)
        learner = model.prompt_learner
        prompts = learner()[learner.alignment_index()]  # (K+1, D) [background, parts]
        scores = alignment_scores(forward.patches, prompts, grid, model.alignment_logit_scale)
        alignment = torch.softmax(scores.float(), dim=1)[:, 1:]
        spa = None
        if forward.spa is not None:
            spa = forward.spa[:, -num_parts:].float().reshape(-1, num_parts, *grid)  # the last K queries
        return {"spa_maps": None if spa is None else spa.cpu(), "alignment_maps": alignment.cpu()}

    # ------------------------------------------------------------------ matching
    def distance(self, query: ProFDFeatures, gallery: ProFDFeatures, mode: Optional[str] = None) -> Tensor:
        """(Nq, Ng) visibility-aware distances (Eq. 14, the checkpoint's metric) on the CPU.

        Args:
            mode: ``visibility`` (global + visibility-weighted parts), ``global`` or ``parts``; default the
                checkpoint's ``profd.test.distance``.
        """
        dist = visibility_aware_distance(
            query.global_feat, query.part_feats, query.visibility, gallery.global_feat, gallery.part_feats,
            gallery.visibility, metric=self.metric, mode=mode or self.mode, chunk_size=self.chunk_size,
            device=self.distance_device)
        return dist.cpu()

    def build_index(self, gallery: ProFDFeatures, kind: str = "hnsw", mode: Optional[str] = None,
                    **options: Any) -> CandidateIndex:
        """A faiss candidate index of ``gallery`` for :meth:`rank` (needs the ``[search]`` extra).

        Args:
            kind: ``hnsw`` | ``ivf`` | ``flat``.
            options: see :class:`~profd_plugin.metrics.search.CandidateIndex`.
        """
        return CandidateIndex(gallery, kind=kind, metric=self.metric, mode=mode or self.mode,
                              device=self.distance_device, **options)

    def rank(self, query: ProFDFeatures, gallery: ProFDFeatures, topk: Optional[int] = None,
             index: Optional[CandidateIndex] = None, *, mode: Optional[str] = None,
             candidates: Optional[int] = None, effort: Optional[int] = None) -> Ranking:
        """Gallery rows of each query, nearest first, under :meth:`distance`.

        Args:
            topk: keep the k nearest (no Nq x Ng matrix is formed: exact blocks with a running top-k);
                None: the whole ranking (a dense (Nq, Ng) matrix).
            index: a :meth:`build_index` of ``gallery``: faiss proposes ``candidates`` per query on the global
                features and they are re-scored exactly (approximate only if a true top-k image is not
                proposed; needs ``topk``).
            mode: as :meth:`distance` (an index fixes its own).
            candidates: re-scored per query (default ``CANDIDATES_PER_RESULT * topk``).
            effort: the index's search breadth (HNSW efSearch, IVF nprobe).

        Returns:
            :class:`~profd_plugin.metrics.search.Ranking` ``(indices, distances)``, each (Nq, k).
        """
        mode = mode or (index.mode if index is not None else self.mode)
        if index is not None:
            if topk is None:
                raise ValueError("rank(index=...) needs topk")
            if index.mode != mode or index.metric != self.metric or index.ntotal != len(gallery):
                raise ValueError(f"the index was built for another gallery or distance ({index.ntotal} "
                                 f"images, {index.metric}/{index.mode}; here {len(gallery)}, "
                                 f"{self.metric}/{mode})")
            candidates = candidates or CANDIDATES_PER_RESULT * topk
            return index.topk(query, topk, candidates=candidates, effort=effort)
        if topk is not None:
            return exact_topk(query, gallery, topk, metric=self.metric, mode=mode, chunk_size=self.chunk_size,
                              device=self.distance_device)
        dist = self.distance(query, gallery, mode)
        order = torch.argsort(dist, dim=1, stable=True)
        return Ranking(order, torch.gather(dist, 1, order))
