"""Loss terms, patch targets, memory banks and the criterion on synthetic tensors (invariants, no model)."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from profd_plugin.config import get_default_config
from profd_plugin.losses import CRITERION_KEYS, LOSS_KEYS, ProFDCriterion, ProFDTargets, build_profd_criterion
from profd_plugin.losses import functional as LF
from profd_plugin.losses.targets import alignment_labels, attention_targets
from profd_plugin.modeling.memory import MemoryBanks, PrototypeMemory, prototype_contrastive_loss
from profd_plugin.modeling.outputs import ProFDOutput
from profd_plugin.modeling.targets import patch_labels, weighted_average_pooling

N, K, D, C = 8, 5, 16, 4
GRID = (16, 8)


def _masks(n=N, k=K, size=(64, 32)):
    return torch.softmax(3 * torch.randn(n, k + 1, *size), dim=1)


# ------------------------------------------------------------------ targets
@pytest.mark.parametrize("stride, grid", [(16, (16, 8)), (12, (21, 10))])
def test_patch_labels_grid_and_normalisation(stride, grid):
    labels = patch_labels(_masks(), grid_size=grid, image_size=(256, 128), patch_size=16, stride=stride,
                          label_scale=64.0)
    assert labels.shape == (N, K + 1, *grid)
    assert torch.allclose(labels.sum(1), torch.ones(N, *grid), atol=1e-5)


def test_patch_labels_match_official_avgpool_and_fallback():
    masks = _masks()
    ref = torch.softmax(64.0 * F.avg_pool2d(masks, kernel_size=4, stride=3), dim=1)
    geometry = dict(grid_size=(21, 10), image_size=(256, 128), patch_size=16, stride=12, label_scale=64.0)
    assert torch.allclose(patch_labels(masks, **geometry), ref)
    coarse = _masks(size=(32, 16))  # mask scale 8: kernel 2, stride 1.5 -> adaptive pooling
    got = patch_labels(coarse, **geometry)
    assert got.shape == (N, K + 1, 21, 10)
    assert torch.allclose(got, torch.softmax(64.0 * F.adaptive_avg_pool2d(coarse, (21, 10)), dim=1))


def test_attention_targets_layout():
    labels = torch.softmax(torch.randn(N, K + 1, *GRID), dim=1)
    with_fg = attention_targets(labels, has_foreground=True, temperature=0.01)
    without = attention_targets(labels, has_foreground=False, temperature=0.01)
    assert with_fg.shape == (N, K + 2, 128) and without.shape == (N, K + 1, 128)
    assert torch.allclose(with_fg.sum(-1), torch.ones(N, K + 2), atol=1e-5)
    fg = torch.softmax((1 - labels[:, 0]).flatten(1) / 0.01, dim=-1)
    assert torch.allclose(with_fg[:, 1], fg) and torch.allclose(with_fg[:, 2:], without[:, 1:])


def test_alignment_labels_and_wap():
    labels = torch.zeros(1, 3, 2, 2)
    labels[0, 2] = 1.0
    assert alignment_labels(labels, (4, 4)).eq(2).all()
    feats = torch.arange(8.0).reshape(1, 4, 2)  # (N, L, D)
    weights = torch.tensor([[[1.0, 0, 0, 1]]])  # (N, 1, L)
    assert torch.allclose(weighted_average_pooling(feats, weights), torch.tensor([[[3.0, 4.0]]]))


# ------------------------------------------------------------------ loss terms
def test_identity_loss_matches_hand_formula():
    logits, labels, eps = torch.randn(N, C), torch.randint(0, C, (N,)), 0.1
    target = (1 - eps) * F.one_hot(labels, C) + eps / C
    ref = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    assert torch.allclose(LF.identity_loss(logits, labels, eps), ref)


def test_triplet_zero_when_negatives_far_and_positive_when_close():
    labels = torch.tensor([0, 0, 1, 1])
    far = torch.tensor([[0.0, 0], [0.1, 0], [100, 0], [100.1, 0]])
    assert LF.batch_hard_triplet_loss(far, labels, 0.3) == 0
    close = torch.tensor([[0.0, 0], [1.0, 0], [0.1, 0], [1.1, 0]])
    assert LF.batch_hard_triplet_loss(close, labels, 0.3) > 0
    feats = torch.randn(4, 3, requires_grad=True)
    LF.batch_hard_triplet_loss(feats, torch.zeros(4, dtype=torch.long), 0.3).backward()  # no negatives
    assert torch.isfinite(feats.grad).all()


def test_attention_loss_minimal_at_target():
    targets = torch.softmax(torch.randn(N, K + 2, 128), dim=-1)
    at_target = LF.spatial_attention_loss(targets, targets)
    for _ in range(3):
        other = torch.softmax(targets.log() + 0.5 * torch.randn_like(targets), dim=-1)
        assert LF.spatial_attention_loss(other, targets) > at_target


def test_alignment_loss_prefers_correct_scores():
    labels = torch.randint(0, K + 1, (N, 64, 32))
    down = F.one_hot(labels, K + 1).permute(0, 3, 1, 2).float()  # (N, K+1, 64, 32)
    good = 20 * down
    assert LF.alignment_loss(good, labels, 0.1) < LF.alignment_loss(torch.zeros_like(good), labels, 0.1)


@pytest.mark.parametrize("mode", ["softmax", "mean"])
def test_diversity_zero_for_orthogonal_parts(mode):
    eye = torch.eye(D)[:K].expand(N, K, D) * 3.0  # orthogonal parts
    assert LF.diversity_loss(eye, mode).abs() < 1e-6
    same = torch.randn(N, 1, D).expand(N, K, D)
    assert torch.allclose(LF.diversity_loss(same, mode), torch.tensor(1.0), atol=1e-5)
    assert LF.diversity_loss(torch.randn(N, 1, D), mode) == 0


def test_diversity_modes_differ():
    feats = torch.randn(N, K, D)
    assert not torch.allclose(LF.diversity_loss(feats, "softmax"), LF.diversity_loss(feats, "mean"))


def test_focal_loss_finite_for_extreme_logits():
    logits = torch.tensor([[1e4, -1e4, 1e4, -1e4]], requires_grad=True)
    targets = torch.tensor([[1.0, 0, 0, 1]])
    loss = LF.focal_visibility_loss(logits, targets, 0.65, 2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_focal_loss_matches_reference_formula():
    logits, targets = torch.randn(N, K) * 3, torch.randint(0, 2, (N, K)).float()
    p, alpha, gamma = torch.sigmoid(logits), 0.65, 2.0
    ref = (-alpha * (1 - p) ** gamma * targets * torch.log(p)
           - (1 - alpha) * p ** gamma * (1 - targets) * torch.log(1 - p)).mean()
    assert torch.allclose(LF.focal_visibility_loss(logits, targets.bool(), alpha, gamma), ref, atol=1e-6)


def test_pcl_lower_for_true_class():
    protos = F.normalize(torch.randn(C, D), dim=1)
    feats = protos[:2] * 5.0
    true = prototype_contrastive_loss(feats, protos, torch.tensor([0, 1]), 0.05)
    wrong = prototype_contrastive_loss(feats, protos, torch.tensor([2, 3]), 0.05)
    assert true < wrong
    memory = PrototypeMemory(C, D, temperature=0.05, momentum=0.2)
    memory.prototypes.copy_(protos)
    assert torch.allclose(memory(feats, torch.tensor([0, 1])), true)


# ------------------------------------------------------------------ memory
def test_memory_init_and_hard_update():
    memory = PrototypeMemory(3, 2, temperature=0.05, momentum=0.2)
    absent = memory.prototypes[2].clone()
    feats = torch.tensor([[2.0, 0], [0, 1], [0, 3], [0, 5]])
    memory.initialize(feats, torch.tensor([0, 0, 1, 1]), normalize_first=True)
    assert memory.initialized and torch.equal(memory.prototypes[2], absent)
    assert torch.allclose(memory.prototypes[0], F.normalize(torch.tensor([1.0, 1.0]), dim=0))
    raw = PrototypeMemory(3, 2, temperature=0.05, momentum=0.2)
    raw.initialize(feats, torch.tensor([0, 0, 1, 1]), normalize_first=False)
    assert torch.allclose(raw.prototypes[0], F.normalize(torch.tensor([2.0, 1.0]), dim=0))
    memory.prototypes[0] = torch.tensor([1.0, 0.0])
    memory.update(torch.tensor([[1.0, 0.1], [0.0, 1.0]]), torch.tensor([0, 0]))  # hardest = [0, 1]
    assert torch.allclose(memory.prototypes[0], F.normalize(torch.tensor([0.2, 0.8]), dim=0))
    assert set(memory.state_dict()) == {"prototypes", "initialized"}


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_memory_hard_update_ties_take_the_lowest_index(order):
    memory = PrototypeMemory(1, 2, temperature=0.05, momentum=0.5)
    memory.prototypes[0] = torch.tensor([1.0, 0.0])
    tied = torch.tensor([[0.0, 1.0], [0.0, -1.0]])[list(order)]  # both at cosine 0 to the prototype
    memory.update(tied, torch.tensor([0, 0]))
    assert torch.allclose(memory.prototypes[0], F.normalize(torch.tensor([0.5, 0.0]) + 0.5 * tied[0], dim=0))


def _loop_update(prototypes, features, labels, momentum, mode):
    """The straightforward per-identity loop (official CM_Hard / the batch mean): the reference."""
    protos = prototypes.clone()
    feats = F.normalize(features, dim=1)
    for label in torch.unique(labels).tolist():
        members = feats[labels == label]  # (n, D)
        if mode == "hard":
            target = members[(members @ protos[label]).argmin()]  # first index among equal minima
        else:
            target = members.mean(dim=0)
        protos[label] = F.normalize(momentum * protos[label] + (1 - momentum) * target, dim=0)
    return protos


@pytest.mark.parametrize("mode", ["hard", "mean"])
def test_memory_update_matches_loop_reference(mode):
    torch.manual_seed(0)
    classes, dim = 7, 6
    labels = torch.tensor([0, 2, 2, 5, 0, 0, 3, 5, 2, 3, 0, 5, 5, 2])  # 1, 4 and 6 absent
    features = 3 * torch.randn(labels.numel(), dim)
    features[9] = features[6]  # exact tie inside identity 3
    features[12] = 2 * features[3]  # same direction: tie after normalisation (identity 5)
    memory = PrototypeMemory(classes, dim, temperature=0.05, momentum=0.2, update=mode)
    before = memory.prototypes.clone()
    for step in range(3):  # repeated updates stay equal to the loop
        expected = _loop_update(memory.prototypes, features + step, labels, 0.2, mode)
        memory.update(features + step, labels)
        torch.testing.assert_close(memory.prototypes, expected, rtol=0, atol=1e-6)
    absent = torch.tensor([1, 4, 6])
    assert torch.equal(memory.prototypes[absent], before[absent])
    assert not torch.allclose(memory.prototypes[labels], before[labels])
    assert torch.allclose(memory.prototypes.norm(dim=1), torch.ones(classes))


def test_memory_mean_update():
    memory = PrototypeMemory(1, 2, temperature=0.05, momentum=0.5, update="mean")
    memory.prototypes[0] = torch.tensor([1.0, 0.0])
    memory.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    expected = F.normalize(torch.tensor([0.75, 0.25]), dim=0)  # 0.5 K + 0.5 mean of the unit features
    assert torch.allclose(memory.prototypes[0], expected)


def test_memory_banks_own_init_loss_update_and_state(monkeypatch):
    banks = MemoryBanks(C, D, K * D, temperature=0.05, momentum=0.2, weight_global=2.0, weight_parts=0.5)
    assert set(banks.state_dict()) == {f"bank_{b}.{t}" for b in ("global", "parts")
                                       for t in ("prototypes", "initialized")}
    assert not banks.initialized
    pids = torch.arange(C).repeat_interleave(N // C)
    g, p = torch.randn(N, D), torch.randn(N, K * D)
    assert banks.initialize([(g[:4], p[:4], pids[:4]), (g[4:], p[4:], pids[4:])]) == N  # chunks = one pass
    assert banks.initialized
    reference = PrototypeMemory(C, K * D)
    reference.initialize(p, pids, normalize_first=False)
    assert torch.allclose(banks.bank_parts.prototypes, reference.prototypes)
    losses = banks.losses(g, p, pids)
    assert tuple(losses) == MemoryBanks.KEYS == LOSS_KEYS[len(CRITERION_KEYS):]
    assert torch.allclose(losses["loss_pcl_global"], 2.0 * banks.bank_global(g, pids))
    assert torch.allclose(losses["loss_pcl_parts"], 0.5 * reference(p, pids))
    before = banks.bank_parts.prototypes.clone()
    banks.update(g, p, pids)
    reference.update(p, pids)
    assert torch.allclose(banks.bank_parts.prototypes, reference.prototypes)
    assert not torch.allclose(before, reference.prototypes)
    banks.reset()
    assert not banks.initialized


def test_memory_banks_with_zero_weight_skip_loss_and_update():
    banks = MemoryBanks(C, D, K * D, weight_parts=0.0)
    pids = torch.arange(C).repeat_interleave(N // C)
    frozen = banks.bank_parts.prototypes.clone()
    assert tuple(banks.losses(torch.randn(N, D), torch.randn(N, K * D), pids)) == ("loss_pcl_global",)
    banks.update(torch.randn(N, D), torch.randn(N, K * D), pids)
    assert torch.equal(banks.bank_parts.prototypes, frozen)


def test_memory_banks_loss_is_fp32_under_autocast():
    banks = MemoryBanks(C, D, K * D)
    pids = torch.arange(C).repeat_interleave(N // C)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = banks.losses(torch.randn(N, D).bfloat16(), torch.randn(N, K * D).bfloat16(), pids)
    assert all(v.dtype == torch.float32 for v in losses.values())


# ------------------------------------------------------------------ criterion
def _outputs(spa=True, has_foreground=True):
    g = torch.randn(N, D, requires_grad=True)
    parts = torch.randn(N, K, D, requires_grad=True)
    q = K + 2 if has_foreground else K + 1
    return ProFDOutput(
        global_feat=g, global_bn=g * 2, global_logits=torch.randn(N, C), part_feats=parts,
        concat_bn=parts.flatten(1) * 2, concat_logits=torch.randn(N, C), visibility_logits=torch.randn(N, K),
        spa_attention=torch.softmax(torch.randn(N, q, 128), -1) if spa else None,
        alignment_scores=torch.randn(N, K + 1, *GRID))


def _targets(label_scale=64.0):
    masks = _masks()
    labels = patch_labels(masks, grid_size=GRID, image_size=(256, 128), patch_size=16, stride=16,
                          label_scale=label_scale)
    return ProFDTargets(pids=torch.arange(C).repeat_interleave(N // C), masks=masks,
                        visibility=torch.rand(N, K + 1) > 0.3, patch_labels=labels)


def test_output_is_pure_data():
    for field in dataclasses.fields(ProFDOutput):
        value = getattr(_outputs(), field.name)
        assert isinstance(value, torch.Tensor), field.name


def test_criterion_keys_weights_and_omission(monkeypatch):
    out, targets = _outputs(), _targets()
    losses = ProFDCriterion()(out, targets)
    assert tuple(losses) == CRITERION_KEYS
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    doubled = ProFDCriterion(visibility=20.0)(out, targets)
    assert torch.allclose(doubled["loss_visibility"], 2 * losses["loss_visibility"])

    def boom(*args, **kwargs):
        raise AssertionError("a zero-weight term was computed")

    monkeypatch.setattr(LF, "diversity_loss", boom)
    with pytest.raises(AssertionError, match="zero-weight"):  # the patch is live: an active term calls it
        ProFDCriterion()(out, targets)
    partial = ProFDCriterion(diversity=0.0)(out, targets)
    assert "loss_diversity" not in partial and len(partial) == len(CRITERION_KEYS) - 1
    with pytest.raises(TypeError):
        ProFDCriterion(pcl_global=1.0)  # the PCL weights belong to the memory banks


def test_criterion_errors_and_no_foreground():
    targets = _targets()
    with pytest.raises(ValueError, match="SPA"):
        ProFDCriterion()(_outputs(spa=False), targets)
    losses = ProFDCriterion()(_outputs(has_foreground=False), targets)
    assert math.isfinite(losses["loss_attention"].item())
    bad = dataclasses.replace(_outputs(), spa_attention=torch.softmax(torch.randn(N, K + 3, 128), -1))
    with pytest.raises(ValueError, match="queries"):
        ProFDCriterion()(bad, targets)


@pytest.mark.parametrize("has_foreground", [True, False])
def test_criterion_mask_terms_use_the_given_patch_labels(has_foreground):
    out = _outputs(has_foreground=has_foreground)
    criterion = ProFDCriterion()
    with pytest.raises(TypeError):
        ProFDCriterion(patch_label_scale=64.0)  # the model owns M_p's scale, not the criterion
    sharp, soft = _targets(64.0), _targets(1.0)
    soft = dataclasses.replace(soft, masks=sharp.masks, patch_labels=patch_labels(
        sharp.masks, grid_size=GRID, image_size=(256, 128), patch_size=16, stride=16, label_scale=1.0))
    results = {}
    for name, targets in (("sharp", sharp), ("soft", soft)):
        losses = criterion(out, targets)
        labels, masks = targets.patch_labels, targets.masks
        expected = attention_targets(labels, has_foreground=has_foreground, temperature=0.01)
        ref_attention = LF.spatial_attention_loss(out.spa_attention, expected)
        ref_alignment = 0.35 * LF.alignment_loss(out.alignment_scores,
                                                 alignment_labels(labels, tuple(masks.shape[-2:])), 0.1)
        assert torch.allclose(losses["loss_attention"], ref_attention)
        assert torch.allclose(losses["loss_alignment"], ref_alignment)
        results[name] = losses["loss_attention"]
    assert not torch.allclose(results["sharp"], results["soft"])


def test_build_criterion_from_cfg_disables_attention_without_spa():
    cfg = get_default_config()
    criterion = build_profd_criterion(cfg)
    assert criterion.weights["loss_alignment"] == 0.35 and criterion.weights["loss_visibility"] == 10.0
    cfg.profd.decoder.attention = "sea"
    assert build_profd_criterion(cfg).weights["loss_attention"] == 0.0


def test_criterion_runs_in_fp32_under_autocast():
    out, targets = _outputs(), _targets()
    names = ("global_feat", "part_feats", "global_logits", "spa_attention")
    half = {name: getattr(out, name).bfloat16() for name in names}
    low = ProFDOutput(**{**out.__dict__, **half})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = ProFDCriterion()(low, targets)
    assert all(v.dtype == torch.float32 for v in losses.values())
