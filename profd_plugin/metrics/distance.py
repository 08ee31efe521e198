"""The visibility-aware distance (ProFD Eq. 14) between query and gallery images.

The paper (Eq. 14) compares a query ``q`` and a gallery image ``g`` with the cosine distance of each of the
``K + 1`` features (global + ``K`` parts), weighting part ``k`` by the product of the two visibility scores:

    D(q, g) = sum_k w_k d_k / sum_k w_k,    w_0 = 1,    w_k = v^q_k * v^g_k  (k = 1..K).

The official code (Cuixxx/ProFD ``metrics/distance.py:179-247``, ``utils/tensortools.py:12-21``) uses the
same weighting but ``d_k = ||q_k/|q_k| - g_k/|g_k|||_2 = sqrt(2 - 2 cos)``, the Euclidean distance between
L2-normalised features; that is ``metric="euclidean"`` here (the default), ``metric="cosine"`` is Eq. 14
as printed. Because ``w_0 = 1`` the denominator is never below 1. Timings: ``docs/PERFORMANCE.md``.

Shape shorthand: Nq / Ng query / gallery images, K parts, D feature dimension, F compared features
(K + 1, 1 or K by mode), C a chunk of gallery rows.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple, Union

import torch

from ..choices import DIST_METRICS, DIST_MODES

__all__ = ["visibility_aware_distance", "paired_visibility_aware_distance", "GalleryEmbedding",
           "embed_gallery", "embed_queries", "candidate_distance"]


# metric -> (c, p): the pair term before the square root is c w^p (1 - cos); see _embed.
_METRIC_FORM = {"euclidean": (2.0, 2), "cosine": (1.0, 1)}
_SQRT_FLOOR = torch.finfo(torch.float32).tiny  # see _pair_terms
_NORM_EPS = 1e-12  # as torch.nn.functional.normalize: a zero feature stays 0 (distance sqrt 2 to all)


def _check_side(name: str, glob: torch.Tensor, parts: torch.Tensor, vis: torch.Tensor) -> None:
    """Raises ValueError unless ``glob`` (N, D), ``parts`` (N, K, D) and ``vis`` (N, K) agree."""
    if glob.dim() != 2 or parts.dim() != 3 or vis.dim() != 2:
        raise ValueError(
            f"{name}: expected global (N, D), parts (N, K, D), visibility (N, K); got "
            f"{tuple(glob.shape)}, {tuple(parts.shape)}, {tuple(vis.shape)}"
        )
    n, d = glob.shape
    if parts.shape[0] != n or parts.shape[2] != d or tuple(vis.shape) != tuple(parts.shape[:2]):
        raise ValueError(
            f"{name}: inconsistent shapes global {tuple(glob.shape)}, parts {tuple(parts.shape)}, "
            f"visibility {tuple(vis.shape)} (expected (N, D), (N, K, D), (N, K))"
        )


def _check_distance_inputs(
    q_global: torch.Tensor, q_parts: torch.Tensor, q_vis: torch.Tensor,
    g_global: torch.Tensor, g_parts: torch.Tensor, g_vis: torch.Tensor,
    metric: str, mode: str, chunk_size: int,
) -> None:
    """Raises a one-line ValueError on bad arguments of :func:`visibility_aware_distance`."""
    _check_side("query", q_global, q_parts, q_vis)
    _check_side("gallery", g_global, g_parts, g_vis)
    if q_parts.shape[1:] != g_parts.shape[1:]:
        raise ValueError(f"query (K, D) = {tuple(q_parts.shape[1:])} != gallery {tuple(g_parts.shape[1:])}")
    if metric not in DIST_METRICS or mode not in DIST_MODES:
        raise ValueError(
            f"metric must be one of {DIST_METRICS} and mode one of {DIST_MODES}; got {metric!r}, {mode!r}"
        )
    if mode == "parts" and q_parts.shape[1] == 0:
        raise ValueError("mode='parts' needs K >= 1 parts")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _feature_weights(vis: torch.Tensor, mode: str, device: torch.device) -> torch.Tensor:
    """Per-image weight of each compared feature, (F, N): 1 for the global feature, visibility for parts.

    F = K+1 (global first) for "visibility", 1 for "global", K for "parts". The pair weight ``w_k`` is
    the product of the query's and the gallery image's weight of feature k.
    """
    vis = vis.to(device=device, dtype=torch.float32).t()  # (K, N)
    ones = vis.new_ones((1, vis.shape[1]))
    return {"visibility": torch.cat([ones, vis]), "global": ones, "parts": vis}[mode]


def _embed(
    glob: torch.Tensor, parts: torch.Tensor, weights: torch.Tensor, mode: str, metric: str, query: bool
) -> torch.Tensor:
    """L2-normalises the compared features and appends one coordinate, so that one matmul per chunk gives
    the weighted per-feature term of every pair.

    With ``a = c s_q [-q, 1]`` (query) and ``b = s_g [g, 1]`` (gallery), unit ``q``, ``g`` and ``s = w^p``:
    ``a . b = c (s_q s_g) (1 - cos)``. Euclidean (c = 2, p = 2): ``sqrt(a . b) = w_q w_g ||q - g||``;
    cosine (c = 1, p = 1): ``a . b = w_q w_g (1 - cos)``. The weights thus ride inside the matmul, and the
    normalisation and weighting cost one pass over the features.

    Args:
        glob: (N, D) global features; parts: (N, K, D) part features (any scale, dtype, device).
        weights: (F, N) non-negative per-image weights from :func:`_feature_weights`, on the target device.
        mode, metric: as in :func:`visibility_aware_distance`.
        query: build the query-side (``a``) or the gallery-side (``b``) vectors.

    Returns:
        (F, N, D+1) float32 on the device of ``weights``.
    """
    scale, power = _METRIC_FORM[metric]
    sources = [glob[None]] if mode != "parts" else []  # (1, N, D)
    sources += [parts.transpose(0, 1)] if mode != "global" else []  # (K, N, D)
    s = weights.pow(power)  # (F, N)
    last = s * scale if query else s  # the constant coordinate: c s_q (query) or s_g (gallery)
    num_feats, n = weights.shape
    out = torch.empty(num_feats, n, glob.shape[1] + 1, dtype=torch.float32, device=weights.device)
    start = 0
    for src in sources:  # the global block and/or the part block
        src = src.to(device=weights.device, dtype=torch.float32)  # (f, N, D)
        rows = slice(start, start + src.shape[0])
        norm = torch.linalg.vector_norm(src, dim=-1).clamp_(min=_NORM_EPS)  # as F.normalize
        factor = (-last[rows] if query else s[rows]) / norm  # (f, N)
        torch.mul(src, factor[:, :, None], out=out[rows, :, :-1])
        start += src.shape[0]
    out[:, :, -1] = last
    return out


def _pair_terms(q_emb: torch.Tensor, g_emb: torch.Tensor, metric: str) -> torch.Tensor:
    """(F, Nq, D+1) x (F, C, D+1) -> (F, Nq, C) weighted per-feature distances ``w_k d_k``."""
    return _finish_terms(torch.bmm(q_emb, g_emb.transpose(1, 2)), metric)  # (F, Nq, C)


def _finish_terms(terms: torch.Tensor, metric: str) -> torch.Tensor:
    """Products ``a . b`` of :func:`_embed` vectors -> weighted distances ``w_k d_k`` (in place)."""
    if metric == "euclidean":
        # Rounding can push w^2 (2 - 2 cos) slightly below 0, and zero-weight pairs give exact zeros: clamp
        # to the smallest normal float rather than 0 (sqrt adds < 1e-19 per feature), because the CPU sqrt
        # kernel takes a ~5x slower path on exact zeros (half the part pairs with thresholded visibility).
        terms.clamp_(min=_SQRT_FLOOR).sqrt_()
    return terms


def visibility_aware_distance(
    q_global: torch.Tensor,
    q_parts: torch.Tensor,
    q_vis: torch.Tensor,
    g_global: torch.Tensor,
    g_parts: torch.Tensor,
    g_vis: torch.Tensor,
    *,
    metric: str = "euclidean",
    mode: str = "visibility",
    chunk_size: int = 512,
    device: Optional[Union[str, torch.device]] = None,
) -> torch.Tensor:
    """Visibility-weighted part distance between every query and every gallery image (ProFD Eq. 14).

    Every feature vector is L2-normalised, then ``D = sum_k w_k d_k / sum_k w_k`` with ``w_0 = 1``
    (global) and ``w_k = v^q_k v^g_k`` (parts). Gallery chunks cost one batched matmul over the K+1
    features (weights folded in, see ``_embed``), a square root and a sum; only a (K+1, Nq, chunk_size)
    intermediate is held. Time ~ one ``torch.cdist`` over the (N, (K+1) D) concatenation (PERFORMANCE.md).

    Args:
        q_global, g_global: (Nq, D), (Ng, D) global features (any scale, dtype and device).
        q_parts, g_parts: (Nq, K, D), (Ng, K, D) part features.
        q_vis, g_vis: (Nq, K), (Ng, K) part visibility in [0, 1] (bool or float, thresholded by the model).
        metric: "euclidean" (official code: ``d_k = sqrt(2 - 2 cos)``, in [0, 2]) or "cosine"
            (paper Eq. 14: ``d_k = 1 - cos``, in [0, 2]).
        mode: "visibility" (global + visibility-weighted parts, the ProFD test distance), "global"
            (``d_0`` only; parts and visibility are ignored) or "parts" (parts only, weights
            ``v^q_k v^g_k``; a pair with no commonly visible part gets the unweighted mean of its K part
            distances, so the result is never NaN).
        chunk_size: gallery rows per chunk (4 (K+1) Nq chunk_size bytes); 512 measured ~15 % faster than
            500 in the MKL matmul.
        device: where to compute; default: the device of ``q_global``.

    Returns:
        (Nq, Ng) float32 distance matrix on ``device``.

    Raises:
        ValueError: on inconsistent shapes or an unknown ``metric`` / ``mode``.

    Examples::
        >>> q_g, q_p, q_v = torch.randn(4, 512), torch.randn(4, 5, 512), torch.rand(4, 5)
        >>> g_g, g_p, g_v = torch.randn(9, 512), torch.randn(9, 5, 512), torch.rand(9, 5)
        >>> visibility_aware_distance(q_g, q_p, q_v, g_g, g_p, g_v).shape
        torch.Size([4, 9])
    """
    _check_distance_inputs(q_global, q_parts, q_vis, g_global, g_parts, g_vis, metric, mode, chunk_size)
    device = torch.device(device) if device is not None else q_global.device
    with torch.no_grad():
        q_w, g_w = _feature_weights(q_vis, mode, device), _feature_weights(g_vis, mode, device)  # (F, N)
        q_emb = _embed(q_global, q_parts, q_w, mode, metric, query=True)  # (F, Nq, D+1)
        g_emb = _embed(g_global, g_parts, g_w, mode, metric, query=False)  # (F, Ng, D+1)
        out = _weighted_sums(q_emb, g_emb, metric, chunk_size)  # (Nq, Ng): sum_k w_k d_k
        if mode == "global":  # one feature, w_0 = 1: the sum is the distance
            return out
        weight_sum = q_w.t() @ g_w  # (Nq, Ng): sum_k w_k (>= 1 in "visibility" mode)
        if mode == "parts":
            _parts_fallback(out, weight_sum, (q_global, q_parts), (g_global, g_parts), metric, chunk_size)
        return out.div_(weight_sum)


def _weighted_sums(q_emb: torch.Tensor, g_emb: torch.Tensor, metric: str, chunk_size: int) -> torch.Tensor:
    """``sum_k w_k d_k`` for every pair, over chunks of gallery rows: (F, Nq, D+1), (F, Ng, D+1) -> (Nq, Ng).

    Few, large operations per chunk: on a CPU shared with other processes every parallel region can wait a
    scheduler time slice for its second thread, whatever its size.
    """
    out = torch.empty(q_emb.shape[1], g_emb.shape[1], dtype=torch.float32, device=q_emb.device)  # (Nq, Ng)
    for start in range(0, g_emb.shape[1], chunk_size):
        cols = slice(start, start + chunk_size)
        torch.sum(_pair_terms(q_emb, g_emb[:, cols], metric), dim=0, out=out[:, cols])
    return out


def _parts_fallback(
    out: torch.Tensor, weight_sum: torch.Tensor, query: Tuple[torch.Tensor, torch.Tensor],
    gallery: Tuple[torch.Tensor, torch.Tensor], metric: str, chunk_size: int,
) -> None:
    """Mode "parts": where a pair shares no visible part (zero weight sum), use the unweighted mean of
    its K part distances instead of 0 / 0.

    Args:
        out: (Nq, Ng) weighted sums, updated in place.
        weight_sum: (Nq, Ng) weight sums; zeros are replaced by 1 in place so that the caller's division
            leaves the unweighted mean.
        query, gallery: the (global, parts) features of each side.
        metric: as in :func:`visibility_aware_distance`.
        chunk_size: gallery rows per chunk.
    """
    no_common = weight_sum == 0  # (Nq, Ng)
    if not bool(no_common.any()):
        return
    units = [torch.ones(parts.shape[1], parts.shape[0], device=out.device) for _, parts in (query, gallery)]
    q_unit = _embed(*query, units[0], "parts", metric, query=True)  # (K, Nq, D+1), unit weights
    g_unit = _embed(*gallery, units[1], "parts", metric, query=False)  # (K, Ng, D+1)
    for start in range(0, out.shape[1], chunk_size):
        cols = slice(start, start + chunk_size)
        if bool(no_common[:, cols].any()):
            mean = _pair_terms(q_unit, g_unit[:, cols], metric).mean(0)  # (Nq, C)
            torch.where(no_common[:, cols], mean, out[:, cols], out=out[:, cols])
    weight_sum.masked_fill_(no_common, 1.0)


def paired_visibility_aware_distance(
    q_global: torch.Tensor,
    q_parts: torch.Tensor,
    q_vis: torch.Tensor,
    g_global: torch.Tensor,
    g_parts: torch.Tensor,
    g_vis: torch.Tensor,
    *,
    metric: str = "euclidean",
    mode: str = "visibility",
) -> torch.Tensor:
    """:func:`visibility_aware_distance` between each query and its own C gallery images (candidates).

    The same embedding, weights, square-root floor and "parts" fallback as the full matrix, so each value
    equals the corresponding entry of :func:`visibility_aware_distance` up to float rounding; used to re-score
    the candidates of an approximate search (``metrics.search``).

    Args:
        q_global, q_parts, q_vis: (Nq, D), (Nq, K, D), (Nq, K) query features.
        g_global, g_parts, g_vis: (Nq, C, D), (Nq, C, K, D), (Nq, C, K) gallery features per query.
        metric, mode: as in :func:`visibility_aware_distance`.

    Returns:
        (Nq, C) float32 distances on the device of ``q_global``.
    """
    num_q, num_c = g_global.shape[:2]
    flat = (g_global.flatten(0, 1), g_parts.flatten(0, 1), g_vis.flatten(0, 1))  # (Nq*C, ...)
    _check_distance_inputs(q_global, q_parts, q_vis, *flat, metric, mode, 1)
    if g_global.shape[0] != q_global.shape[0]:
        raise ValueError(f"{q_global.shape[0]} queries but candidates for {g_global.shape[0]}")
    device = q_global.device
    with torch.no_grad():
        q_w, g_w = _feature_weights(q_vis, mode, device), _feature_weights(flat[2], mode, device)  # (F, .)
        q_emb = _embed(q_global, q_parts, q_w, mode, metric, query=True)  # (F, Nq, D+1)
        g_emb = _embed(flat[0], flat[1], g_w, mode, metric, query=False)  # (F, Nq*C, D+1)
        out = _paired_terms(q_emb, g_emb, num_c, metric).sum(0)  # (Nq, C): sum_k w_k d_k
        if mode == "global":
            return out
        weight_sum = (q_w[:, :, None] * g_w.view(-1, num_q, num_c)).sum(0)  # (Nq, C)
        no_common = weight_sum == 0
        if mode == "parts" and bool(no_common.any()):  # as _parts_fallback: unweighted mean of K parts
            q_unit = _embed(q_global, q_parts, torch.ones_like(q_w), "parts", metric, query=True)
            g_unit = _embed(flat[0], flat[1], torch.ones_like(g_w), "parts", metric, query=False)
            mean = _paired_terms(q_unit, g_unit, num_c, metric).mean(0)  # (Nq, C)
            out = torch.where(no_common, mean, out)
            weight_sum.masked_fill_(no_common, 1.0)
        return out.div_(weight_sum)


def _paired_terms(q_emb: torch.Tensor, g_emb: torch.Tensor, num_c: int, metric: str) -> torch.Tensor:
    """(F, Nq, D+1) x (F, Nq*C, D+1) -> (F, Nq, C) weighted per-feature distances, query i vs its C rows."""
    num_f, num_q, width = q_emb.shape
    terms = torch.bmm(g_emb.view(num_f * num_q, num_c, width), q_emb.reshape(num_f * num_q, width, 1))
    return _finish_terms(terms.view(num_f, num_q, num_c), metric)


class GalleryEmbedding(NamedTuple):
    """A gallery in the form the distance computes with (see :func:`_embed`), image-major for gathering.

    Attributes:
        emb: (Ng, F, D+1) weighted unit features with the constant coordinate.
        weights: (Ng, F) per-image feature weights (1 for the global feature, visibility for parts).
        metric, mode: what ``emb`` was built for.
    """

    emb: torch.Tensor
    weights: torch.Tensor
    metric: str
    mode: str


#: gallery rows embedded at a time by :func:`embed_gallery` (bounds its temporaries)
_EMBED_BLOCK = 8192


def embed_gallery(g_global: torch.Tensor, g_parts: torch.Tensor, g_vis: torch.Tensor, *,
                  metric: str = "euclidean", mode: str = "visibility",
                  device: Optional[Union[str, torch.device]] = None) -> GalleryEmbedding:
    """Embed a gallery once (a copy of its features' size) for :func:`candidate_distance`."""
    _check_distance_inputs(g_global[:0], g_parts[:0], g_vis[:0], g_global, g_parts, g_vis, metric, mode, 1)
    device = torch.device(device) if device is not None else g_global.device
    with torch.no_grad():
        weights = _feature_weights(g_vis, mode, device)  # (F, Ng)
        emb = torch.empty(g_global.shape[0], weights.shape[0], g_global.shape[1] + 1, device=device)
        for start in range(0, g_global.shape[0], _EMBED_BLOCK):
            rows = slice(start, start + _EMBED_BLOCK)
            block = _embed(g_global[rows], g_parts[rows], weights[:, rows], mode, metric, query=False)
            emb[rows] = block.transpose(0, 1)  # (B, F, D+1)
        return GalleryEmbedding(emb, weights.t().contiguous(), metric, mode)


def embed_queries(q_global: torch.Tensor, q_parts: torch.Tensor, q_vis: torch.Tensor,
                  gallery: GalleryEmbedding) -> Tuple[torch.Tensor, torch.Tensor]:
    """Query-side ``(emb (F, Nq, D+1), weights (F, Nq))`` for :func:`candidate_distance` (once per search)."""
    _check_distance_inputs(q_global, q_parts, q_vis, q_global[:0], q_parts[:0], q_vis[:0], gallery.metric,
                           gallery.mode, 1)
    with torch.no_grad():
        q_w = _feature_weights(q_vis, gallery.mode, gallery.emb.device)  # (F, Nq)
        return _embed(q_global, q_parts, q_w, gallery.mode, gallery.metric, query=True), q_w


def candidate_distance(q_global: torch.Tensor, q_parts: torch.Tensor, q_vis: torch.Tensor,
                       gallery: GalleryEmbedding, candidates: torch.Tensor,
                       raw_gallery: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
                       workspace: Optional[torch.Tensor] = None,
                       query_embedding: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """The distance of each query to its own C candidate gallery rows, from an embedded gallery.

    The same embedding and square-root floor as :func:`visibility_aware_distance` on the candidate pairs:
    one gather of the candidates' embedded rows and one batched matrix product (F x F per pair, of which
    the diagonal is used: F times the multiply-adds, but full-speed GEMM), so each value equals the
    corresponding entry of the full matrix up to float rounding.

    Args:
        q_global, q_parts, q_vis: (Nq, D), (Nq, K, D), (Nq, K) query features.
        gallery: from :func:`embed_gallery`.
        candidates: (Nq, C) int64 gallery rows (all valid).
        raw_gallery: (global, parts, visibility) of the gallery; needed in mode "parts" only, for pairs
            without a commonly visible part (unweighted mean of their part distances, as the full matrix).
        workspace: optional float32 buffer of at least Nq C F (D+1) elements on the gallery's device,
            reused for the gather (a fresh large buffer costs page faults on every call).
        query_embedding: :func:`embed_queries` of these queries, if already computed.

    Returns:
        (Nq, C) float32 distances on the gallery embedding's device.
    """
    metric, mode, emb = gallery.metric, gallery.mode, gallery.emb
    num_q, num_c = candidates.shape
    num_f, width = emb.shape[1:]
    flat = candidates.flatten().to(emb.device)
    with torch.no_grad():
        # (F, Nq, D+1), (F, Nq)
        q_emb, q_w = query_embedding or embed_queries(q_global, q_parts, q_vis, gallery)
        out = None if workspace is None else workspace[:flat.numel() * num_f * width].view(-1, num_f, width)
        rows = torch.index_select(emb, 0, flat, out=out)  # (Nq*C, F, D+1)
        prods = torch.bmm(rows.view(num_q, num_c * num_f, width), q_emb.permute(1, 2, 0))  # (Nq, C*F, F)
        terms = prods.view(num_q, num_c, num_f, num_f).diagonal(dim1=2, dim2=3).contiguous()  # (Nq, C, F)
        out = _finish_terms(terms, metric).sum(-1)  # (Nq, C): sum_k w_k d_k
        if mode == "global":
            return out
        g_w = gallery.weights.index_select(0, flat).view(num_q, num_c, num_f)
        weight_sum = (g_w * q_w.t()[:, None]).sum(-1)  # (Nq, C)
        if mode == "parts" and bool((weight_sum == 0).any()):
            if raw_gallery is None:
                raise ValueError("mode 'parts': pairs without a commonly visible part need raw_gallery")
            rows = [t.index_select(0, flat.to(t.device)).to(emb.device).view(num_q, num_c, *t.shape[1:])
                    for t in raw_gallery]  # (Nq, C, ...)
            return paired_visibility_aware_distance(q_global.to(emb.device), q_parts.to(emb.device),
                                                    q_vis.to(emb.device), *rows, metric=metric, mode=mode)
        return out.div_(weight_sum)
