"""Top-k search with the visibility-aware distance, exact or through a faiss candidate index.

* :func:`exact_topk`: the k nearest gallery images of every query under :func:`visibility_aware_distance`,
  over blocks of queries and gallery rows with a running top-k, so that no Nq x Ng matrix is ever held
  (memory ~ ``query_chunk x gallery_chunk`` floats whatever the gallery size).
* :class:`CandidateIndex` (``.topk``): a faiss index over the L2-normalised global features
  proposes C candidates per query (inner product = cosine, the global term of Eq. 14); the candidates are
  then re-scored exactly with :func:`candidate_distance` and the best k kept. The result is
  exact whenever the true top k are among the candidates; ``benchmarks/bench_search.py`` measures how
  often that holds and what it saves (``docs/INFERENCE.md``).

faiss is optional (``pip install -e ".[search]"``, package ``faiss-cpu``) and imported on first use.

Shape shorthand: Nq / Ng query / gallery images, K parts, D feature width, C candidates per query.
A *side* is any object with ``global_feat`` (N, D), ``part_feats`` (N, K, D) and ``visibility`` (N, K)
(``ProFDFeatures``, ``ProFDEmbeddings``).
"""
from __future__ import annotations

import logging
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .distance import candidate_distance, embed_gallery, embed_queries, visibility_aware_distance

__all__ = ["Ranking", "exact_topk", "CandidateIndex", "INDEX_KINDS", "import_faiss"]

logger = logging.getLogger(__name__)

INDEX_KINDS = ("hnsw", "ivf", "flat")
#: HNSW graph degree (faiss' M): 32 is faiss' recommendation for ~512-d float vectors
HNSW_M = 32
#: HNSW build beam width: twice faiss' default of 40, which builds ~1.4x faster but gave a graph whose recall
#: after re-scoring was 0.953 instead of 0.997 on the 100k benchmark gallery (benchmarks/bench_search.py)
HNSW_EF_CONSTRUCTION = 80
#: IVF lists per sqrt(gallery size) (faiss' rule of thumb is 4-16 sqrt(N))
IVF_LISTS_PER_SQRT = 4
#: IVF lists searched per query by default
IVF_NPROBE = 16
#: byte budget of the gathered candidate features of one query block during re-scoring (one buffer, reused)
RESCORE_BLOCK_BYTES = 64 * 2**20
_FLOAT_BYTES = 4


class Ranking(NamedTuple):
    """Top-k result: ``indices`` (Nq, k) int64 gallery rows, ``distances`` (Nq, k) float32; nearest first."""

    indices: torch.Tensor
    distances: torch.Tensor


def import_faiss() -> Any:
    """The faiss module, or an ImportError saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise ImportError("the candidate index needs faiss: pip install -e \".[search]\" (or pip install "
                          "faiss-cpu)") from None
    return faiss


def _check_topk(topk: int, num_gallery: int) -> int:
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    return min(int(topk), num_gallery)


def _merge(best_d: torch.Tensor, best_i: torch.Tensor, dist: torch.Tensor, offset: int, topk: int
           ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Running top-k: (B, k') best so far + a (B, C) block whose column j is gallery row offset + j."""
    cols = torch.arange(offset, offset + dist.shape[1], device=dist.device).expand_as(dist)
    all_d, all_i = torch.cat([best_d, dist], 1), torch.cat([best_i, cols], 1)
    d, pos = torch.topk(all_d, min(topk, all_d.shape[1]), dim=1, largest=False, sorted=False)
    return d, torch.gather(all_i, 1, pos)


def _sort_stable(dist: torch.Tensor, idx: torch.Tensor) -> Ranking:
    """Order by distance, equal distances by gallery row (as a stable argsort of the full row)."""
    order = torch.argsort(idx, dim=1)
    dist, idx = torch.gather(dist, 1, order), torch.gather(idx, 1, order)
    order = torch.argsort(dist, dim=1, stable=True)
    return Ranking(torch.gather(idx, 1, order), torch.gather(dist, 1, order))


def _rows(side: Any, rows: slice, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(t[rows].to(device) for t in (side.global_feat, side.part_feats, side.visibility))


def exact_topk(query: Any, gallery: Any, topk: int, *, metric: str = "euclidean", mode: str = "visibility",
               query_chunk: int = 1024, gallery_chunk: int = 8192, chunk_size: int = 512,
               device: Optional[torch.device] = None) -> Ranking:
    """The ``topk`` nearest gallery images of every query under the visibility-aware distance, exactly.

    Args:
        query, gallery: sides (see the module docstring).
        topk: k (at most the gallery size).
        metric, mode: as :func:`visibility_aware_distance`.
        query_chunk, gallery_chunk: block sizes; one (query_chunk, gallery_chunk) distance block is held.
        chunk_size: gallery rows per matmul inside :func:`visibility_aware_distance`.
        device: where to compute (default: the query features' device); results are on the CPU.

    Returns:
        :class:`Ranking`, nearest first (ties by gallery row).
    """
    num_q, num_g = query.global_feat.shape[0], gallery.global_feat.shape[0]
    topk = _check_topk(topk, num_g)
    device = torch.device(device) if device is not None else query.global_feat.device
    out_i, out_d = [], []
    for q0 in range(0, num_q, query_chunk):
        q = _rows(query, slice(q0, q0 + query_chunk), device)
        best_d = torch.empty(q[0].shape[0], 0, device=device)
        best_i = torch.empty(q[0].shape[0], 0, dtype=torch.long, device=device)
        for g0 in range(0, num_g, gallery_chunk):
            g = _rows(gallery, slice(g0, g0 + gallery_chunk), device)
            dist = visibility_aware_distance(*q, *g, metric=metric, mode=mode, chunk_size=chunk_size)
            best_d, best_i = _merge(best_d, best_i, dist, g0, topk)
        ranking = _sort_stable(best_d, best_i)
        out_i.append(ranking.indices.cpu())
        out_d.append(ranking.distances.cpu())
    return Ranking(torch.cat(out_i), torch.cat(out_d))


class CandidateIndex:
    """A searchable gallery: a faiss index over its L2-normalised global features (inner product = cosine,
    the global term of Eq. 14) and the gallery embedded once for exact re-scoring.

    Memory: the embedding is one more copy of the gallery features ((K+1) (D+1) floats per image), the
    faiss index one copy of the global features (plus the HNSW graph, ~``2 hnsw_m`` int32 per image).

    Args:
        gallery: the gallery side (see the module docstring); kept by reference.
        kind: ``hnsw`` (graph, no training: the default), ``ivf`` (inverted lists, k-means trained on the
            gallery) or ``flat`` (exact global cosine: the candidates are the true global top C).
        metric, mode: the distance the candidates are re-scored with (:func:`visibility_aware_distance`).
        hnsw_m, ef_construction: HNSW graph degree and build beam (``HNSW_M``, ``HNSW_EF_CONSTRUCTION``).
        nlist: IVF lists (default ``IVF_LISTS_PER_SQRT * sqrt(Ng)``).
        seed: k-means seed of ``ivf``.
        device: where the embedded gallery lives and re-scoring runs (default: the gallery's device).

    Attributes:
        ntotal: gallery size; kind, metric, mode; index: the faiss index.
    """

    def __init__(self, gallery: Any, *, kind: str = "hnsw", metric: str = "euclidean",
                 mode: str = "visibility", hnsw_m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION,
                 nlist: Optional[int] = None, seed: int = 0, device: Optional[torch.device] = None) -> None:
        if kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
        faiss = import_faiss()
        self.gallery, self.kind, self.metric, self.mode = gallery, kind, metric, mode
        self.embedding = embed_gallery(gallery.global_feat, gallery.part_feats, gallery.visibility,
                                       metric=metric, mode=mode, device=device)
        vectors = self._unit(gallery.global_feat)  # (Ng, D) float32, C-contiguous
        self.ntotal, dim = vectors.shape
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
        elif kind == "ivf":
            nlist = nlist or max(1, int(IVF_LISTS_PER_SQRT * self.ntotal ** 0.5))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.train(vectors)
        else:
            index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        self.index = index

    @staticmethod
    def _unit(glob: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(F.normalize(glob.detach().float().cpu(), dim=1).numpy())

    def search(self, query_global: torch.Tensor, candidates: int, *, effort: Optional[int] = None
               ) -> torch.Tensor:
        """(Nq, C) int64 candidate gallery rows per query, best global cosine first (-1 = none found).

        Args:
            query_global: (Nq, D) query global features.
            candidates: C.
            effort: search breadth: HNSW ``efSearch`` (default and minimum: C), IVF ``nprobe``
                (default ``IVF_NPROBE``); ignored by ``flat``.
        """
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(effort or 0, candidates)
        elif self.kind == "ivf":
            self.index.nprobe = min(effort or IVF_NPROBE, self.index.nlist)
        _, idx = self.index.search(self._unit(query_global), int(candidates))
        return torch.from_numpy(idx)

    def topk(self, query: Any, topk: int, *, candidates: int, effort: Optional[int] = None) -> Ranking:
        """Top-k by exact re-scoring of ``candidates`` per query proposed by the faiss index.

        Args:
            query: the query side.
            topk: k (at most the gallery size; raised to it if ``candidates`` is smaller).
            candidates: C, the candidates re-scored per query (more: better recall, slower).
            effort: the index's search breadth (:meth:`search`).

        Returns:
            :class:`Ranking` on the CPU, nearest first; a query with fewer than k candidates found gets
            -1 rows at distance inf.
        """
        topk = _check_topk(topk, self.ntotal)
        candidates = min(max(int(candidates), topk), self.ntotal)
        cand = self.search(query.global_feat, candidates, effort=effort)  # (Nq, C)
        emb = self.embedding.emb  # (Ng, F, D+1)
        row_floats = emb.shape[1] * emb.shape[2]
        block = max(1, RESCORE_BLOCK_BYTES // (candidates * row_floats * _FLOAT_BYTES))
        workspace = torch.empty(min(block, cand.shape[0]) * candidates * row_floats, device=emb.device)
        raw = (self.gallery.global_feat, self.gallery.part_feats, self.gallery.visibility)
        q_all = _rows(query, slice(None), emb.device)
        q_emb, q_w = embed_queries(*q_all, self.embedding)  # once: few large operations
        out_i, out_d = [], []
        for q0 in range(0, cand.shape[0], block):
            sel = slice(q0, q0 + block)
            rows = cand[sel].to(emb.device)  # (B, C)
            found = rows >= 0
            dist = candidate_distance(*(t[sel] for t in q_all), self.embedding, rows.clamp(min=0),
                                      raw_gallery=raw, workspace=workspace,
                                      query_embedding=(q_emb[:, sel], q_w[:, sel]))  # (B, C)
            dist = dist.masked_fill_(~found, float("inf"))
            d, pos = torch.topk(dist, topk, dim=1, largest=False, sorted=False)
            ranking = _sort_stable(d, torch.gather(rows, 1, pos))
            out_i.append(ranking.indices.cpu())
            out_d.append(ranking.distances.cpu())
        return Ranking(torch.cat(out_i), torch.cat(out_d))
