"""Tests of profd_plugin.metrics: exactness of evaluate_rank against torchreid, the visibility-aware
distance against a brute-force double loop, and the invariants of both."""
import math
import warnings

import numpy as np
import pytest
import torch

from profd_plugin.metrics import evaluate_rank, evaluate_rank_host_compatible, rank, visibility_aware_distance

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Cython evaluation")
    from torchreid.reid.metrics import rank as host_rank


def host_evaluate(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50, use_metric_cuhk03=False):
    """torchreid's Python evaluator (the reference): what ``evaluate_rank(..., use_cython=False)`` runs.
    Called as ``evaluate_py`` because ``import profd_plugin`` installs our evaluator as ``evaluate_rank``."""
    return host_rank.evaluate_py(dist, q_pids, g_pids, q_cams, g_cams, max_rank, use_metric_cuhk03)


def brute_force_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Per-query reference written from the protocol, CMC padded with 1 after each query's last item."""
    max_rank = min(max_rank, dist.shape[1])
    cmcs, aps = [], []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i])
        kept = [j for j in order if not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])]
        rel = [int(g_pids[j] == q_pids[i]) for j in kept]
        if not any(rel):
            continue
        first = rel.index(1)
        cmcs.append([1.0 if r >= first else 0.0 for r in range(max_rank)])
        hits, precisions = 0, []
        for k, r in enumerate(rel):
            hits += r
            if r:
                precisions.append(hits / (k + 1))
        aps.append(sum(precisions) / len(precisions))
    return np.mean(cmcs, axis=0), float(np.mean(aps))


def random_problem(seed, num_q, num_g, num_ids, num_cams, shift=2.0, absent=0, distractors=0):
    """Structured random distances: N(0, 1), positives shifted by -shift. Some query ids may be absent
    from the gallery, and pid-0 distractors may be appended to it."""
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, num_ids + 1, num_q)
    q_pids[:absent] = num_ids + 1 + np.arange(absent)  # ids that never appear in the gallery
    g_pids = np.concatenate([rng.integers(1, num_ids + 1, num_g), np.zeros(distractors, dtype=np.int64)])
    q_cams = rng.integers(0, num_cams, num_q)
    g_cams = rng.integers(0, num_cams, len(g_pids))
    dist = rng.standard_normal((num_q, len(g_pids))).astype(np.float32)
    dist[q_pids[:, None] == g_pids[None, :]] -= shift
    return dist, q_pids, g_pids, q_cams, g_cams


# ---------------------------------------------------------------------------------------------- evaluate_rank
@pytest.mark.parametrize(
    "seed, num_q, num_g, num_ids, num_cams, absent, distractors",
    [
        (0, 40, 300, 20, 2, 0, 0),
        (1, 97, 611, 60, 6, 5, 40),
        (2, 150, 1203, 100, 8, 12, 100),
        (3, 33, 80, 10, 3, 3, 10),
        (4, 64, 2500, 200, 8, 0, 300),
    ],
)
@pytest.mark.parametrize("tied", [False, True])
def test_evaluate_rank_matches_torchreid(seed, num_q, num_g, num_ids, num_cams, absent, distractors, tied):
    dist, *ids = random_problem(seed, num_q, num_g, num_ids, num_cams, absent=absent, distractors=distractors)
    if tied:
        dist = np.round(dist, 1)  # heavy ties: order must follow np.argsort exactly
    ref_cmc, ref_map = host_evaluate(dist, *ids)
    cmc, mAP = evaluate_rank(dist, *ids)
    assert cmc.dtype == np.float32 and cmc.shape == ref_cmc.shape
    np.testing.assert_array_equal(cmc, ref_cmc)  # bit-identical
    assert mAP == ref_map  # bit-identical (APs are summed exactly as torchreid sums them)
    assert isinstance(mAP, float)


def test_counting_path_equals_sorting_path():
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(13, 80, 900, 40, 6, absent=5, distractors=50)
    row = 10  # force one tie between a negative and a kept positive
    positive = np.flatnonzero((g_pids == q_pids[row]) & (g_cams != q_cams[row]))[0]
    dist[row, np.flatnonzero(g_pids != q_pids[row])[0]] = dist[row, positive]
    code = rank._gallery_codes(q_pids, q_cams, g_pids, g_cams)
    num_rel = (code == rank._POS).sum(axis=1)
    rows, ranks, hits, flagged = rank._ranks_by_counting(dist, code, num_rel)
    ref_rows, ref_ranks, ref_hits = rank._ranks_by_sorting(dist, code)
    keep = ~flagged[ref_rows]
    assert flagged[row] and flagged.sum() < 5  # only rows with ties are left to the sort
    order = np.lexsort((ranks, rows))
    np.testing.assert_array_equal(rows[order], ref_rows[keep])
    np.testing.assert_array_equal(ranks[order], ref_ranks[keep])
    np.testing.assert_array_equal(hits[order], ref_hits[keep])


@pytest.mark.parametrize("kind", ["inf_nan", "int", "float64", "float16"])
def test_evaluate_rank_special_distances(kind):
    dist, *ids = random_problem(14, 40, 300, 20, 3, absent=3)
    if kind == "inf_nan":
        dist[0, :5], dist[1, 7], dist[2, :] = np.inf, np.nan, np.inf
    else:
        dist = (dist * 4).astype({"int": np.int64, "float64": np.float64, "float16": np.float16}[kind])
    ref_cmc, ref_map = host_evaluate(dist, *ids)
    cmc, mAP = evaluate_rank(dist, *ids)
    np.testing.assert_array_equal(cmc, ref_cmc)
    assert mAP == ref_map


def test_evaluate_rank_block_size_does_not_matter(monkeypatch):
    dist, *ids = random_problem(5, 70, 400, 30, 4, absent=4, distractors=20)
    ref = evaluate_rank(dist, *ids)
    monkeypatch.setattr("profd_plugin.metrics.rank._RANK_CHUNK_BYTES", 1)  # one query row per block
    cmc, mAP = evaluate_rank(dist, *ids)
    np.testing.assert_array_equal(cmc, ref[0])
    assert mAP == ref[1]


def test_evaluate_rank_accepts_tensors():
    dist, *ids = random_problem(6, 30, 200, 15, 3)
    ref = evaluate_rank(dist, *ids)
    cmc, mAP = evaluate_rank(torch.from_numpy(dist), *[torch.from_numpy(a) for a in ids])
    np.testing.assert_array_equal(cmc, ref[0])
    assert mAP == ref[1]


def test_small_gallery_truncates_cmc_like_torchreid():
    # query cameras never occur in the gallery: nothing is removed, all rows have length num_g < max_rank
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(7, 25, 30, 5, 3)
    q_cams = q_cams + 10
    ref_cmc, ref_map = host_evaluate(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    cmc, mAP = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    assert cmc.shape == (30,)
    np.testing.assert_array_equal(cmc, ref_cmc)
    assert mAP == ref_map


def test_ragged_tiny_gallery_where_torchreid_crashes():
    dist, *ids = random_problem(8, 30, 20, 4, 2)
    with pytest.raises(ValueError):  # numpy >= 1.24: inhomogeneous shape
        host_evaluate(dist, *ids, max_rank=50)
    cmc, mAP = evaluate_rank(dist, *ids, max_rank=50)
    ref_cmc, ref_map = brute_force_rank(dist, *ids, max_rank=50)
    assert cmc.shape == (20,)
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-6)
    assert mAP == pytest.approx(ref_map, abs=1e-12)
    assert cmc[-1] == 1.0 and np.all(np.diff(cmc) >= 0)


def test_equal_short_rows_keep_documented_length():
    # every query loses 2 same-camera positives: torchreid returns a CMC of length 8, we return 10
    q_pids, q_cams = np.array([1, 2]), np.array([0, 0])
    g_pids = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3, 3])
    g_cams = np.array([0, 0, 1, 0, 0, 1, 1, 1, 1, 1])
    dist = np.random.default_rng(9).random((2, 10)).astype(np.float32)
    ref_cmc, ref_map = host_evaluate(dist, q_pids, g_pids, q_cams, g_cams)
    cmc, mAP = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
    assert ref_cmc.shape == (8,) and cmc.shape == (10,)
    np.testing.assert_array_equal(cmc[:8], ref_cmc)
    np.testing.assert_array_equal(cmc[8:], 1.0)
    assert mAP == ref_map


def test_no_valid_query_raises():
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(10, 5, 40, 5, 2)
    with pytest.raises(ValueError, match="gallery"):
        evaluate_rank(dist, q_pids + 100, g_pids, q_cams, g_cams)


@pytest.mark.parametrize(
    "change",
    ["dist_1d", "q_pids", "g_pids", "q_camids", "g_camids", "max_rank"],
)
def test_evaluate_rank_bad_inputs(change):
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(11, 5, 40, 5, 2)
    args = dict(distmat=dist, q_pids=q_pids, g_pids=g_pids, q_camids=q_cams, g_camids=g_cams, max_rank=50)
    if change == "dist_1d":
        args["distmat"] = dist.ravel()
    elif change == "max_rank":
        args["max_rank"] = 0
    else:
        args[change] = args[change][:-1]
    with pytest.raises(ValueError):
        evaluate_rank(**args)


def test_host_compatible_signature_and_cuhk03_fallback():
    dist, *ids = random_problem(12, 30, 200, 15, 3)
    cmc, _ = evaluate_rank_host_compatible(dist, *ids, max_rank=20, use_metric_cuhk03=False, use_cython=False)
    np.testing.assert_array_equal(cmc, host_evaluate(dist, *ids, max_rank=20)[0])
    np.random.seed(0)  # eval_cuhk03 samples one gallery image per identity with np.random
    ours = evaluate_rank_host_compatible(dist, *ids, max_rank=20, use_metric_cuhk03=True)
    np.random.seed(0)
    ref = host_evaluate(dist, *ids, max_rank=20, use_metric_cuhk03=True)
    np.testing.assert_array_equal(ours[0], ref[0])
    assert ours[1] == ref[1]


# ------------------------------------------------------------------------------ visibility_aware_distance
def make_features(seed, num_q=4, num_g=6, num_parts=3, dim=8):
    gen = torch.Generator().manual_seed(seed)
    q = (torch.randn(num_q, dim, generator=gen), torch.randn(num_q, num_parts, dim, generator=gen),
         torch.rand(num_q, num_parts, generator=gen))
    g = (torch.randn(num_g, dim, generator=gen), torch.randn(num_g, num_parts, dim, generator=gen),
         torch.rand(num_g, num_parts, generator=gen))
    return q, g


def brute_force_distance(q, g, metric, mode):
    """Double loop over pairs, float64, written from the formula."""
    (qg, qp, qv), (gg, gp, gv) = [[t.double() for t in side] for side in (q, g)]
    out = torch.zeros(len(qg), len(gg), dtype=torch.float64)
    for i in range(len(qg)):
        for j in range(len(gg)):
            feats_q = [qg[i]] + list(qp[i])
            feats_g = [gg[j]] + list(gp[j])
            d = []
            for a, b in zip(feats_q, feats_g):
                a, b = a / a.norm(), b / b.norm()
                d.append(float((a - b).norm()) if metric == "euclidean" else 1.0 - float(a @ b))
            w = [1.0] + [float(qv[i, k] * gv[j, k]) for k in range(qp.shape[1])]
            if mode == "global":
                out[i, j] = d[0]
            elif mode == "visibility":
                out[i, j] = sum(wk * dk for wk, dk in zip(w, d)) / sum(w)
            elif sum(w[1:]) > 0:
                out[i, j] = sum(wk * dk for wk, dk in zip(w[1:], d[1:])) / sum(w[1:])
            else:
                out[i, j] = sum(d[1:]) / len(d[1:])
    return out


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("mode", ["visibility", "global", "parts"])
def test_distance_matches_brute_force(metric, mode):
    q, g = make_features(0)
    g[2][1] = 0.0  # gallery image 1 shares no visible part with anyone (exercises the parts fallback)
    ref = brute_force_distance(q, g, metric, mode)
    out = visibility_aware_distance(*q, *g, metric=metric, mode=mode, chunk_size=4)
    assert out.shape == (4, 6) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_official_form_is_euclidean_between_unit_vectors():
    q, g = make_features(1)
    out = visibility_aware_distance(*q, *g, mode="global")
    ref = torch.cdist(torch.nn.functional.normalize(q[0], dim=1), torch.nn.functional.normalize(g[0], dim=1))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_global_mode_ignores_parts_and_visibility():
    q, g = make_features(2)
    ref = visibility_aware_distance(*q, *g, mode="global")
    q2 = (q[0], torch.randn_like(q[1]), torch.rand_like(q[2]))
    g2 = (g[0], torch.randn_like(g[1]), torch.zeros_like(g[2]))
    torch.testing.assert_close(visibility_aware_distance(*q2, *g2, mode="global"), ref, rtol=0, atol=0)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_zero_visibility_equals_global(metric):
    q, g = make_features(3)
    q = (q[0], q[1], torch.zeros_like(q[2]))
    out = visibility_aware_distance(*q, *g, metric=metric)
    ref = visibility_aware_distance(*q, *g, metric=metric, mode="global")
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("metric, atol", [("euclidean", 2e-3), ("cosine", 1e-6)])
@pytest.mark.parametrize("mode", ["visibility", "global", "parts"])
def test_identical_features_give_zero_distance(metric, atol, mode):
    # matmul-based Euclidean: sqrt(2 - 2 cos) turns a 1e-7 rounding of cos into ~5e-4, hence the tolerance
    q, _ = make_features(4, num_q=5, dim=64)
    out = visibility_aware_distance(*q, *q, metric=metric, mode=mode)
    torch.testing.assert_close(out.diagonal(), torch.zeros(5), rtol=0, atol=atol)
    assert (out.diagonal() < out + atol).all()  # the diagonal is the row minimum


@pytest.mark.parametrize("mode", ["visibility", "parts"])
def test_chunk_size_does_not_change_results(mode):
    q, g = make_features(5, num_q=7, num_g=23, num_parts=5, dim=16)
    ref = visibility_aware_distance(*q, *g, mode=mode, chunk_size=500)
    for chunk in (1, 3, 22, 23):
        torch.testing.assert_close(visibility_aware_distance(*q, *g, mode=mode, chunk_size=chunk), ref,
                                   rtol=1e-6, atol=1e-6)


def test_bool_visibility_float64_input_and_range():
    q, g = make_features(6)
    q = (q[0].double(), q[1].double(), q[2] > 0.5)
    g = (g[0], g[1], g[2] > 0.5)
    out = visibility_aware_distance(*q, *g)
    ref = visibility_aware_distance(q[0].float(), q[1].float(), q[2].float(), *g[:2], g[2].float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    assert (out >= 0).all() and (out <= 2 + 1e-6).all() and not math.isnan(out.sum().item())


@pytest.mark.parametrize(
    "change",
    ["q_global_3d", "parts_n", "parts_d", "vis_k", "gallery_k", "gallery_d", "metric", "mode", "chunk"],
)
def test_distance_bad_inputs(change):
    (qg, qp, qv), (gg, gp, gv) = make_features(7)
    kwargs = {}
    if change == "q_global_3d":
        qg = qg[:, None]
    elif change == "parts_n":
        qp = qp[:-1]
    elif change == "parts_d":
        qp = qp[..., :-1]
    elif change == "vis_k":
        qv = qv[:, :-1]
    elif change == "gallery_k":
        gp, gv = gp[:, :-1], gv[:, :-1]
    elif change == "gallery_d":
        gg, gp = gg[:, :-1], gp[..., :-1]
    elif change == "chunk":
        kwargs["chunk_size"] = 0
    else:
        kwargs[change] = "manhattan"
    with pytest.raises(ValueError):
        visibility_aware_distance(qg, qp, qv, gg, gp, gv, **kwargs)
