"""Golden reference computation: one fixed ProFD step whose numbers must never drift.

The model's official-equivalent behaviour was verified against the official ProFD code on identical
weights and batches (features, visibility, SPA maps, every loss term, gradients, optimizer groups,
memory-bank init and update). :func:`golden_case` recomputes all of that on a fixed batch, with weights
set deterministically *by parameter name* (so the numbers do not depend on the order in which modules
are constructed), and ``tests/golden/<case>.pt`` holds the values recorded on 2026-12-01. A refactor that
changes any recorded value changed a formula: fix the code, or -- for a deliberate change documented in
docs/DESIGN.md -- re-record with ``python tests/golden_reference.py <case>`` and say why in the commit.

Only :func:`run_step` talks to the model's API; when the API changes, adapt it, never the values.

Cases: ``tiny`` (configs/profd_synthetic_vit.yaml: tiny CLIP ViT, 128x64) and the full-size random-init
ViT-B/16 models of ``vit_b16_s16`` (configs/profd_market1501.yaml, 16x8 patches) and ``vit_b16_s12``
(configs/profd_occ_duke.yaml, ProFD*, 21x10 patches).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import zlib
from typing import Dict, Iterator, Optional, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GOLDEN_DIR = os.path.join(HERE, "golden")

CASES = {
    "tiny": "profd_synthetic_vit.yaml",
    "vit_b16_s16": "profd_market1501.yaml",
    "vit_b16_s12": "profd_occ_duke.yaml",
}
NUM_CLASSES = 4
PIDS = (0, 0, 1, 1)  # 2 identities x 2 images; classes 2 and 3 are absent from the batch
DROPOUT_SEED = 1234
#: tensors whose gradient is recorded (present in every case)
GRAD_NAMES = (
    "backbone.visual.conv1.weight",
    "backbone.visual.transformer.resblocks.0.attn.in_proj_weight",
    "backbone.visual.proj",
    "prompt_learner.ctx",
    "prompt_learner.text_encoder.text_projection",
    "prompt_learner.text_encoder.transformer.resblocks.0.mlp.c_fc.weight",
    "decoder.query_proj.1.weight",
    "decoder.layers.0.spa_attn.in_proj_weight",
    "decoder.layers.1.ffn.0.weight",
    "decoder.out_proj.1.weight",
    "visibility_head.weight",
    "classifier.global_fc.weight",
    "classifier.concat_fc.weight",
    "bnneck_global.bn.weight",
)
#: at most this many evenly spaced elements of a large tensor are recorded (plus its norm)
MAX_ELEMENTS = 4096
#: state names as they were when the values were recorded (the golden weights are a function of the name)
RECORDED_NAMES = {
    "memory.bank_global.prototypes": "memory_global.prototypes",
    "memory.bank_parts.prototypes": "memory_parts.prototypes",
}
#: max |a - b| / max |b| allowed per tensor: loose enough for another CPU's kernels, tight enough to
#: catch any change of formula
RTOL = 1e-4


def _generator(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def _golden_value(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A deterministic value for the state entry ``name`` (depends only on the name and the shape)."""
    g, shape = _generator(name), tensor.shape
    if name.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=g)
    if name.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=g)
    if tensor.dim() <= 1:  # norm weights around 1, biases and embeddings around 0
        if name.endswith("weight"):
            return 1.0 + 0.1 * torch.randn(shape, generator=g)
        return 0.02 * torch.randn(shape, generator=g)
    if any(key in name for key in ("embedding", "token_", "ctx", "background", "prototypes")):
        return 0.02 * torch.randn(shape, generator=g)
    # weight matrices: fan_in = input width (x @ proj matrices: rows; nn.Linear / conv: the rest)
    fan_in = shape[0] if not name.endswith("weight") else math.prod(shape[1:])
    return torch.randn(shape, generator=g) / math.sqrt(fan_in)


#: golden values by (recorded name, shape): :func:`_golden_value` is a function of those two alone, so a
#: cache shared by several cases (the ViT-B/16 ones have all but a few of their ~150M values in common)
#: gives every case the values it would draw itself
ValueCache = Dict[Tuple[str, Tuple[int, ...]], torch.Tensor]


@torch.no_grad()
def set_golden_weights(model: torch.nn.Module, cache: Optional[ValueCache] = None) -> None:
    """Overwrite every floating-point parameter and buffer with :func:`_golden_value` (drawn once per
    name and shape when a ``cache`` dict is given)."""
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.is_floating_point():
            recorded = RECORDED_NAMES.get(name, name)
            if cache is None:
                tensor.copy_(_golden_value(recorded, tensor))
                continue
            key = (recorded, tuple(tensor.shape))
            if key not in cache:
                cache[key] = _golden_value(recorded, tensor)
            tensor.copy_(cache[key])


#: the initialisers of torch.nn.init (every module's own init goes through them)
_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                 "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                 "sparse_")


@contextlib.contextmanager
def _nan_initialisers() -> Iterator[None]:
    """While building: every ``torch.nn.init`` initialiser fills NaN instead of drawing random values
    (seconds for a ViT-B/16). :func:`set_golden_weights` overwrites every floating-point state entry
    afterwards, so the recorded values are the same; a value left over from construction would show as
    NaN in them, never as a silent seed dependence."""
    init = torch.nn.init
    saved = {name: getattr(init, name) for name in _INITIALISERS}

    def fill_nan(tensor, *args, **kwargs):
        with torch.no_grad():
            return tensor.fill_(float("nan"))

    for name in _INITIALISERS:
        setattr(init, name, fill_nan)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def golden_batch(image_size, num_parts: int):
    """Fixed images, soft masks (K+1 channels at image / 4), visibility targets and pids."""
    from profd_plugin.data.masks import visibility_targets

    g = torch.Generator().manual_seed(7)
    n = len(PIDS)
    images = 0.5 * torch.randn(n, 3, *image_size, generator=g)
    mask_size = (image_size[0] // 4, image_size[1] // 4)
    masks = torch.softmax(3.0 * torch.randn(n, num_parts + 1, *mask_size, generator=g), dim=1)
    return images, masks, visibility_targets(masks), torch.tensor(PIDS)


def _record(out: Dict[str, torch.Tensor], key: str, tensor: torch.Tensor) -> None:
    """Store ``tensor`` (or evenly spaced elements of it, plus its norm, when it is large)."""
    flat = tensor.detach().float().flatten()
    if flat.numel() > MAX_ELEMENTS:
        out[key + ":norm"] = flat.norm().reshape(1)
        step = flat.numel() // MAX_ELEMENTS
        flat = flat[::step][:MAX_ELEMENTS]
    out[key] = flat.clone()


def build(case: str, cache: Optional[ValueCache] = None):
    """The case's config (random init) and model with golden weights."""
    from profd_plugin.config import setup_cfg
    from profd_plugin.modeling import build_profd_model

    cfg = setup_cfg(os.path.join(ROOT, "configs", CASES[case]), ["profd.clip.pretrained", "none"])
    torch.manual_seed(0)  # irrelevant for the values (set by name below); keeps the build itself fixed
    with _nan_initialisers():
        model = build_profd_model(cfg, NUM_CLASSES)
    set_golden_weights(model, cache)
    return cfg, model


def run_step(cfg, model) -> Dict[str, torch.Tensor]:
    """Eval features, memory init, one train forward + losses + backward, one memory update, and the
    optimizer groups and LR schedule. The only function that uses the model's API."""
    from profd_plugin.losses import ProFDTargets, build_profd_criterion
    from profd_plugin.training import build_optimizer, build_scheduler

    images, masks, vis, pids = golden_batch((cfg.data.height, cfg.data.width), model.num_parts)
    out: Dict[str, torch.Tensor] = {}

    model.eval()
    with torch.no_grad():
        emb = model(images, return_attention=True)
    for field in ("global_feat", "part_feats", "visibility", "attention"):
        _record(out, f"eval.{field}", getattr(emb, field))

    with torch.no_grad():
        g, p = model.pooled_part_features(images, masks)
    _record(out, "init.pooled_global", g)
    _record(out, "init.pooled_parts", p)
    model.memory.initialize([(g, p, pids)])
    _record(out, "memory_init.global", model.memory.bank_global.prototypes)
    _record(out, "memory_init.parts", model.memory.bank_parts.prototypes)

    model.train()
    torch.manual_seed(DROPOUT_SEED)
    outputs = model(images)
    for field in ("global_feat", "global_bn", "global_logits", "part_feats", "concat_bn", "concat_logits",
                  "visibility_logits", "spa_attention", "alignment_scores"):
        _record(out, f"train.{field}", getattr(outputs, field))
    criterion = build_profd_criterion(cfg)
    targets = ProFDTargets(pids=pids, masks=masks, visibility=vis, patch_labels=model.patch_labels(masks))
    losses = criterion(outputs, targets)
    losses.update(model.memory.losses(outputs.global_bn, outputs.concat_bn, pids))
    total = sum(losses.values())
    for key, value in losses.items():
        out[f"loss.{key}"] = value.detach().reshape(1)
    out["loss.total"] = total.detach().reshape(1)
    total.backward()
    params = dict(model.named_parameters())
    for name in GRAD_NAMES:
        _record(out, f"grad.{name}", params[name].grad)

    model.memory.update(outputs.global_bn, outputs.concat_bn, pids)
    _record(out, "memory_step.global", model.memory.bank_global.prototypes)
    _record(out, "memory_step.parts", model.memory.bank_parts.prototypes)

    optimizer = build_optimizer(cfg, model)
    names = {id(p): n for n, p in model.named_parameters()}
    lr_wd = {names[id(p)]: (group["lr"], group["weight_decay"])
             for group in optimizer.param_groups for p in group["params"]}
    order = sorted(lr_wd)
    out["optim.lr"] = torch.tensor([lr_wd[n][0] for n in order], dtype=torch.float64)
    out["optim.weight_decay"] = torch.tensor([lr_wd[n][1] for n in order], dtype=torch.float64)
    out["optim.num_trainable"] = torch.tensor([len(order)])
    # the schedule on a one-parameter optimizer (stepping the model's optimizer would cost seconds)
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.train.lr)
    scheduler = build_scheduler(cfg, probe)
    lrs = []
    for _ in range(cfg.train.max_epoch):
        lrs.append(probe.param_groups[0]["lr"])
        probe.step()
        scheduler.step()
    out["schedule.lr"] = torch.tensor(lrs, dtype=torch.float64)
    return out


def golden_case(case: str, cache: Optional[ValueCache] = None) -> Dict[str, torch.Tensor]:
    """All recorded values of ``case`` (``cache``: see :func:`set_golden_weights`)."""
    cfg, model = build(case, cache)
    return run_step(cfg, model)


def golden_path(case: str) -> str:
    return os.path.join(GOLDEN_DIR, f"{case}.pt")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - b| / max |b| (absolute when ``expected`` is all zeros)."""
    actual, expected = actual.double(), expected.double()
    scale = expected.abs().max().item() or 1.0
    return (actual - expected).abs().max().item() / scale


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    os.makedirs(GOLDEN_DIR, exist_ok=True)
    cache: ValueCache = {}
    for name in sys.argv[1:] or CASES:
        values = golden_case(name, cache)
        torch.save(values, golden_path(name))
        print(f"recorded {len(values)} values to {golden_path(name)}")
