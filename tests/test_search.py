"""Top-k search: the exact blocked search never forms Nq x Ng; the faiss candidate index re-scores exactly."""
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import require_extra

from profd_plugin.metrics import search
from profd_plugin.metrics.distance import (
    candidate_distance,
    embed_gallery,
    paired_visibility_aware_distance,
    visibility_aware_distance,
)

MODES = ("visibility", "global", "parts")
METRICS = ("euclidean", "cosine")


def _side(n, gen, visible=0.4, dim=32, parts=5, centers=None):
    """Random features; with ``centers`` (C, D) each image is a noisy copy of a random center."""
    glob = torch.randn(n, dim, generator=gen)
    if centers is not None:
        glob = centers[torch.randint(len(centers), (n,), generator=gen)] + 0.3 * glob
    part_feats = glob[:, None] + 0.5 * torch.randn(n, parts, dim, generator=gen)
    vis = (torch.rand(n, parts, generator=gen) < visible).float() * torch.rand(n, parts, generator=gen)
    return SimpleNamespace(global_feat=glob, part_feats=part_feats, visibility=vis)


def _full(q, g, metric, mode):
    return visibility_aware_distance(q.global_feat, q.part_feats, q.visibility, g.global_feat, g.part_feats,
                                     g.visibility, metric=metric, mode=mode)


@pytest.fixture(scope="module")
def sides():
    gen = torch.Generator().manual_seed(0)
    return _side(23, gen), _side(301, gen)  # 40 % visible parts: pairs without a common part exist


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("mode", MODES)
def test_exact_topk_equals_the_full_ranking(sides, metric, mode, monkeypatch):
    q, g = sides
    full = _full(q, g, metric, mode)
    shapes = []
    blocked = search.visibility_aware_distance

    def recording(*args, **kwargs):
        out = blocked(*args, **kwargs)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(search, "visibility_aware_distance", recording)
    ranking = search.exact_topk(q, g, 7, metric=metric, mode=mode, query_chunk=5, gallery_chunk=40)
    order = torch.argsort(full, dim=1, stable=True)[:, :7]
    assert torch.equal(ranking.indices, order)
    assert torch.allclose(ranking.distances, torch.gather(full, 1, order), atol=1e-6)
    assert max(a * b for a, b in shapes) <= 5 * 40  # never more than one block of distances
    assert search.exact_topk(q, g, 10_000).indices.shape == (23, 301)  # k is capped at the gallery size


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("mode", MODES)
def test_candidate_distance_equals_the_full_matrix(sides, metric, mode):
    q, g = sides
    full = _full(q, g, metric, mode)
    cand = torch.randint(0, 301, (23, 17), generator=torch.Generator().manual_seed(1))
    emb = embed_gallery(g.global_feat, g.part_feats, g.visibility, metric=metric, mode=mode)
    raw = (g.global_feat, g.part_feats, g.visibility)
    ours = candidate_distance(q.global_feat, q.part_feats, q.visibility, emb, cand, raw_gallery=raw)
    assert torch.allclose(ours, torch.gather(full, 1, cand), atol=1e-6)
    rows = [t[cand] for t in raw]  # (Nq, C, ...)
    paired = paired_visibility_aware_distance(q.global_feat, q.part_feats, q.visibility, *rows, metric=metric,
                                              mode=mode)
    assert torch.allclose(paired, torch.gather(full, 1, cand), atol=1e-6)
    if mode == "parts":  # the unweighted-mean fallback was exercised
        assert bool(((q.visibility[:, None] * g.visibility[cand]).sum(-1) == 0).any())


@pytest.mark.parametrize("mode", MODES)
def test_flat_index_is_exact(sides, mode):
    require_extra("faiss", "search")
    q, g = sides
    index = search.CandidateIndex(g, kind="flat", mode=mode)
    exact = search.exact_topk(q, g, 5, mode=mode)
    every = index.topk(q, 5, candidates=301)
    assert torch.equal(every.indices, exact.indices) and torch.allclose(every.distances, exact.distances)
    few = index.topk(q, 5, candidates=12)  # re-scored exactly: each distance is the true one of its pair
    full = _full(q, g, "euclidean", mode)
    assert torch.allclose(few.distances, torch.gather(full, 1, few.indices), atol=1e-6)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_recall_the_exact_top_k(kind):
    require_extra("faiss", "search")
    gen = torch.Generator().manual_seed(2)
    centers = torch.randn(40, 32, generator=gen)
    q, g = _side(50, gen, 0.8, centers=centers), _side(2000, gen, 0.8, centers=centers)
    exact = search.exact_topk(q, g, 10)
    index = search.CandidateIndex(g, kind=kind, nlist=16)
    found = index.topk(q, 10, candidates=100, effort=8)
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found.indices, exact.indices)) / 500
    assert recall >= 0.95, recall
    full = _full(q, g, "euclidean", "visibility")
    assert torch.allclose(found.distances, torch.gather(full, 1, found.indices), atol=1e-6)


def test_index_errors(sides, monkeypatch):
    q, g = sides
    with pytest.raises(ValueError, match="index kind"):
        search.CandidateIndex(g, kind="lsh")
    with pytest.raises(ValueError, match="topk must be >= 1"):
        search.exact_topk(q, g, 0)
    monkeypatch.setitem(sys.modules, "faiss", None)  # faiss not installed
    with pytest.raises(ImportError, match=r"pip install -e \"\.\[search\]\""):
        search.CandidateIndex(g)
