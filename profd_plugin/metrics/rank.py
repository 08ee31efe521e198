"""Ranking evaluation under torchreid's Market-1501 protocol, vectorised.

:func:`evaluate_rank` reproduces torchreid's ``eval_market1501`` (the Python path of
``torchreid.reid.metrics.rank.evaluate_rank`` with ``use_metric_cuhk03=False``) number for number, but
processes blocks of query rows with array operations instead of a Python loop over queries and over the
gallery, and sorts a row only where the sort's tie breaking can change the result (see
``docs/PERFORMANCE.md`` for timings). :func:`evaluate_rank_host_compatible` has torchreid's signature, so
that ``profd_plugin/host.py`` can install it in place of torchreid's evaluator.

Shape shorthand: Nq / Ng query / gallery images, C a block of query rows, P correct matches per row.
"""
from __future__ import annotations

import logging
from typing import Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["evaluate_rank", "evaluate_rank_host_compatible"]

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[int]]

# Memory budget of one block of query rows in evaluate_rank. Per distance-matrix element a block holds a
# few int8/bool arrays, float and int32 work arrays, int64 bin keys (or argsort indices) and an AP buffer.
_RANK_CHUNK_BYTES = 256 * 2**20
_RANK_BYTES_PER_ELEMENT = 48

# Codes of a gallery item for one query (int8): a negative, a positive that counts, or a positive that the
# protocol removes (same identity seen by the same camera).
_NEG, _POS, _REMOVED = 0, 1, 2


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """Tensor (any device) or array-like -> numpy array, keeping the dtype."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _gallery_codes(
    q_pids: np.ndarray, q_cams: np.ndarray, g_pids: np.ndarray, g_cams: np.ndarray
) -> np.ndarray:
    """(C, Ng) int8 code of every gallery item for every query, in gallery order: ``_NEG``, ``_POS`` (a
    correct match that counts) or ``_REMOVED`` (same identity seen by the same camera)."""
    match = g_pids[None, :] == q_pids[:, None]  # (C, Ng)
    code = match.astype(np.int8)
    code[match & (g_cams[None, :] == q_cams[:, None])] = _REMOVED
    return code


def _ranks_by_sorting(dist: np.ndarray, code: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correct matches of each row via a full ``np.argsort``, exactly as torchreid orders the gallery.

    Args:
        dist: (C, Ng) distances; code: (C, Ng) codes from :func:`_gallery_codes`.

    Returns:
        rows, ranks, hits: for every correct match, its row, its 1-based rank among the kept gallery items
        and the number of correct matches up to it (row-major, ranks increasing).
    """
    order = np.argsort(dist, axis=1)  # (C, Ng); the very call torchreid makes, so ties break identically
    code = np.take_along_axis(code, order, axis=1)  # (C, Ng) in rank order
    del order
    kept_pos = code == _POS
    ranks = np.cumsum(code != _REMOVED, axis=1, dtype=np.int32)  # 1-based rank among kept items
    hits = np.cumsum(kept_pos, axis=1, dtype=np.int32)  # correct matches so far
    rows, cols = np.nonzero(kept_pos)
    return rows, ranks[rows, cols], hits[rows, cols]


def _ranks_by_counting(
    dist: np.ndarray, code: np.ndarray, num_rel: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Same as :func:`_ranks_by_sorting` without sorting the gallery, for rows where it gives the same.

    The rank of a correct match among the kept items is the number of kept negatives closer than it
    plus the number of correct matches closer than it. Each row's few correct-match distances are
    sorted, and every negative is binned against them with a batched binary search (about 4x faster
    than the argsort). The result depends on how the sort breaks ties only if a negative is exactly as
    far as a correct match (or a distance is not finite): such rows are flagged for
    :func:`_ranks_by_sorting`.

    Args:
        dist: (C, Ng) float32/float64 distances; code: (C, Ng) codes; num_rel: (C,) correct matches per row.

    Returns:
        rows, ranks, hits: as in :func:`_ranks_by_sorting`, for the rows that are not flagged.
        flagged: (C,) bool, rows to rank by sorting.
    """
    n, p = len(dist), int(num_rel.max(initial=0))
    rows, cols = np.nonzero(code == _POS)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(num_rel) - num_rel, num_rel)  # index within row
    pos_d = np.full((n, p), np.inf, dtype=dist.dtype)  # (C, P) correct-match distances, inf-padded
    pos_d[rows, slot] = dist[rows, cols]
    pos_d.sort(axis=1)
    neg = code == _NEG
    neg_d = np.where(neg, dist, np.inf).astype(dist.dtype, copy=False)  # (C, Ng)
    closer = torch.searchsorted(torch.from_numpy(pos_d), torch.from_numpy(neg_d), out_int32=True).numpy()
    # `closer` matches are strictly closer than each negative; the next one (or the inf pad) must be farther
    next_d = np.take_along_axis(np.pad(pos_d, ((0, 0), (0, 1)), constant_values=np.inf), closer, axis=1)
    flagged = ((next_d == neg_d) & neg).any(axis=1) | ~np.isfinite(dist).all(axis=1)
    # negatives ahead of the j-th closest match = negatives with fewer than j+1 matches closer than them
    # (non-negatives sit at inf, past every match)
    keys = closer + (np.arange(n, dtype=np.int64) * (p + 1))[:, None]  # (C, Ng) int64
    counts = np.bincount(keys.ravel(), minlength=n * (p + 1)).reshape(n, p + 1)
    neg_ahead = np.cumsum(counts, axis=1)[:, :p]  # (C, P)
    keep = ~flagged[rows]
    rows, slot = rows[keep], slot[keep]
    return rows, neg_ahead[rows, slot] + slot + 1, slot + 1, flagged


def _rank_chunk(
    dist: np.ndarray, q_pids: np.ndarray, q_cams: np.ndarray, g_pids: np.ndarray, g_cams: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Ranks a block of query rows under the Market-1501 protocol.

    Args:
        dist: (C, Ng) distances of C queries.
        q_pids, q_cams: (C,) query identities and cameras.
        g_pids, g_cams: (Ng,) gallery identities and cameras.

    Returns:
        first: (C,) 0-based rank of the first correct match among the kept gallery items, -1 when the
            query has no kept positive (torchreid skips such queries).
        ap: (C,) float64 average precision (NaN for skipped queries).
    """
    code = _gallery_codes(q_pids, q_cams, g_pids, g_cams)  # (C, Ng)
    num_rel = (code == _POS).sum(axis=1)
    num_kept = dist.shape[1] - (code == _REMOVED).sum(axis=1)
    if dist.dtype in (np.float32, np.float64):
        rows, ranks, hits, flagged = _ranks_by_counting(dist, code, num_rel)
    else:  # integer or half-precision distances: sort every row
        rows = ranks = hits = np.empty(0, dtype=np.int64)
        flagged = np.ones(len(dist), dtype=bool)
    if flagged.any():
        idx = np.flatnonzero(flagged)
        sorted_rows, sorted_ranks, sorted_hits = _ranks_by_sorting(dist[idx], code[idx])
        rows = np.concatenate([rows, idx[sorted_rows]])
        ranks = np.concatenate([ranks, sorted_ranks])
        hits = np.concatenate([hits, sorted_hits])
    valid = num_rel > 0
    first = np.full(len(dist), -1, dtype=np.int64)
    first[rows[hits == 1]] = ranks[hits == 1] - 1
    ap = np.full(len(dist), np.nan)
    ap[valid] = _average_precision(rows, ranks, hits, num_kept[valid], valid, num_rel)
    return first, ap


def _average_precision(
    rows: np.ndarray, ranks: np.ndarray, hits: np.ndarray, kept: np.ndarray, valid: np.ndarray,
    num_rel: np.ndarray,
) -> np.ndarray:
    """AP of the valid queries of a block, summed exactly as torchreid sums it.

    torchreid builds, per query, the float64 vector ``precision@i * rel_i`` over the kept gallery items
    and calls ``.sum()`` (numpy pairwise summation, whose rounding depends on the vector length and on
    where the non-zeros sit). Rebuilding that vector, one row per query, grouped by its length, gives
    bit-identical APs.

    Args:
        rows, ranks, hits: row index, 1-based kept rank and running hit count of each correct match.
        kept: (V,) number of kept gallery items of each valid query.
        valid: (C,) bool, queries with at least one correct match.
        num_rel: (C,) number of correct matches of each query.

    Returns:
        (V,) float64 APs of the valid queries, in query order.
    """
    slot = np.cumsum(valid) - 1  # block row -> index among the valid queries
    rows = slot[rows]
    values = hits.astype(np.float64) / ranks.astype(np.float64)  # precision at each hit (x / (i + 1.))
    ap = np.empty(len(kept))
    for length in np.unique(kept):
        members = np.flatnonzero(kept == length)  # valid queries whose kept vector has this length
        local = np.full(len(kept), -1)
        local[members] = np.arange(len(members))
        sel = local[rows] >= 0
        buf = np.zeros((len(members), length))  # (M, L) float64, zeros = non-matches
        buf[local[rows[sel]], ranks[sel] - 1] = values[sel]
        ap[members] = buf.sum(axis=1) / num_rel[valid][members]
    return ap


def _check_rank_inputs(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids, max_rank: int) -> None:
    """Raises a one-line ValueError on inconsistent shapes."""
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    for name, arr, n in (("q_pids", q_pids, num_q), ("q_camids", q_camids, num_q),
                         ("g_pids", g_pids, num_g), ("g_camids", g_camids, num_g)):
        if arr.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) for distmat {distmat.shape}, not {arr.shape}")
    if num_g == 0 or max_rank < 1:
        raise ValueError(f"need a non-empty gallery and max_rank >= 1, got num_g={num_g} max_rank={max_rank}")


def evaluate_rank(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
) -> Tuple[np.ndarray, float]:
    """CMC and mAP under the Market-1501 protocol, identical to torchreid's Python evaluator.

    Per query: the gallery is ordered by ``np.argsort(distmat, axis=1)`` (numpy's default sort, exactly
    torchreid's call, so tied distances are ordered identically), gallery items with the same pid AND
    the same camid are removed, and a query with no remaining correct match is skipped. CMC(r) is the
    fraction of kept queries whose first match is at rank <= r (float32); AP is computed in float64 and
    mAP is ``np.mean`` of the APs. Verified bit-identical to torchreid (CMC and mAP) in
    ``tests/test_metrics.py``.

    Blocks of query rows are processed with array operations. A row is only sorted when the sort's tie
    breaking can matter (a negative exactly as far as a correct match, or a non-finite distance);
    otherwise the ranks of its correct matches are counted (see ``_ranks_by_counting``), which gives the
    same ranks about 4x faster than sorting.

    Tiny galleries, where torchreid crashes (ragged array): a query with fewer than ``max_rank`` kept
    items keeps CMC 1 after its last item (its first match is among them). If *all* such rows share a
    length ``L < min(max_rank, Ng)``, torchreid returns a CMC of length ``L``; this returns the same ``L``
    values followed by 1.0, keeping the documented length.

    Args:
        distmat: (Nq, Ng) distances, numpy array or torch tensor (any device); its dtype is kept.
        q_pids, g_pids: (Nq,), (Ng,) identities.
        q_camids, g_camids: (Nq,), (Ng,) camera ids.
        max_rank: CMC length; like torchreid, reduced to Ng (with a warning) when the gallery is smaller.

    Returns:
        cmc: (min(max_rank, Ng),) float32 CMC curve.
        mAP: mean average precision over the kept queries.

    Raises:
        ValueError: on inconsistent shapes, or if no query has a correct match in the gallery.
    """
    dist = _to_numpy(distmat)
    q_pids, g_pids, q_camids, g_camids = map(_to_numpy, (q_pids, g_pids, q_camids, g_camids))
    _check_rank_inputs(dist, q_pids, g_pids, q_camids, g_camids, max_rank)
    num_q, num_g = dist.shape
    if num_g < max_rank:
        logger.warning("number of gallery samples is quite small (%d): max_rank reduced to it", num_g)
        max_rank = num_g
    block = max(1, _RANK_CHUNK_BYTES // (_RANK_BYTES_PER_ELEMENT * num_g))
    first, ap = np.empty(num_q, dtype=np.int64), np.empty(num_q)
    for start in range(0, num_q, block):
        sl = slice(start, min(start + block, num_q))
        first[sl], ap[sl] = _rank_chunk(dist[sl], q_pids[sl], q_camids[sl], g_pids, g_camids)

    valid = first >= 0
    if not valid.any():
        raise ValueError("no query identity appears in the gallery (under another camera): cannot evaluate")
    # CMC(r): queries whose first match is at rank <= r; counts are exact in float32, divided as torchreid.
    counts = np.cumsum(np.bincount(np.minimum(first[valid], max_rank), minlength=max_rank + 1)[:max_rank])
    return counts.astype(np.float32) / float(valid.sum()), float(np.mean(ap[valid]))


def evaluate_rank_host_compatible(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    use_metric_cuhk03: bool = False,
    use_cython: bool = True,
) -> Tuple[np.ndarray, float]:
    """Drop-in replacement for ``torchreid.reid.metrics.rank.evaluate_rank`` (same signature).

    The Market-1501 protocol goes to :func:`evaluate_rank` (``use_cython`` is irrelevant: same numbers,
    faster than either torchreid path). The CUHK03 single-gallery-shot protocol is delegated to torchreid's
    own implementation (its Cython one when requested and built, else ``evaluate_py``), called directly so
    that this function can replace ``evaluate_rank`` in torchreid without recursing.

    Args:
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank: as in :func:`evaluate_rank`.
        use_metric_cuhk03: use torchreid's CUHK03 protocol.
        use_cython: forwarded to torchreid for the CUHK03 protocol.

    Returns:
        ``(cmc, mAP)`` as in :func:`evaluate_rank`.
    """
    if not use_metric_cuhk03:
        return evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank)
    from torchreid.reid.metrics import rank as host_rank  # lazy: importing torchreid takes seconds

    args = [_to_numpy(a) for a in (distmat, q_pids, g_pids, q_camids, g_camids)]
    if use_cython and host_rank.IS_CYTHON_AVAI:
        return host_rank.evaluate_cy(*args, max_rank, True)
    return host_rank.evaluate_py(*args, max_rank, True)
