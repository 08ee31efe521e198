"""ProFDCriterion: model outputs + targets -> flat dict of weighted loss terms (paper Eq. 19).

Official total (Cuixxx/ProFD ``part_based_engine.py:111-221``):
L = CE_ls(global) + Tri(global) + CE_ls(concat) + Tri(concat) + L_attn + 0.35 L_align + PCL_g + PCL_p
    + L_div + 10 L_vis.
The criterion computes every term but the two PCL ones, which belong to the memory banks that hold their
prototypes (``ProFD.memory.losses``, :class:`~profd_plugin.modeling.memory.MemoryBanks`); ``LOSS_KEYS``
lists all ten in the order the engine sums them. Every weight and temperature is a constructor argument
(``cfg.profd.loss.*``); a term whose weight is 0 is not computed and not returned. The patch labels M_p
(Eq. 6) are a target computed by the model that owns the patch geometry (``ProFD.patch_labels``), so they
always equal the M_p of the model's own pooling.

Shape shorthand:
    N: batch size
    K: number of body parts; Q: attention queries
    C: identities
    Hm, Wm: mask resolution
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict

import torch
from torch import Tensor, nn
from yacs.config import CfgNode

from . import functional as LF
from .targets import alignment_labels, attention_targets

if TYPE_CHECKING:  # type hints only: losses never import modeling at run time
    from ..modeling.outputs import ProFDOutput

__all__ = ["ProFDCriterion", "ProFDTargets", "LOSS_KEYS", "CRITERION_KEYS", "build_profd_criterion"]

logger = logging.getLogger(__name__)

#: the terms of ``ProFDCriterion``, then the memory banks' PCL terms: the order the engine sums them in
CRITERION_KEYS = ("loss_id_global", "loss_triplet_global", "loss_id_parts", "loss_triplet_parts",
                  "loss_attention", "loss_alignment", "loss_diversity", "loss_visibility")
LOSS_KEYS = CRITERION_KEYS + ("loss_pcl_global", "loss_pcl_parts")


@dataclass
class ProFDTargets:
    """What the criterion compares the outputs with (one train batch).

    Attributes:
        pids: (N,) identities in [0, C).
        masks: (N, K+1, Hm, Wm) soft masks, channel 0 = background.
        visibility: (N, K+1) bool part visibility targets, column 0 = background.
        patch_labels: (N, K+1, h, w) patch labels M_p of ``masks`` (``ProFD.patch_labels(masks)``).
    """

    pids: Tensor
    masks: Tensor
    visibility: Tensor
    patch_labels: Tensor


class ProFDCriterion(nn.Module):
    """All ProFD loss terms, each already multiplied by its weight.

    Args:
        id_global, triplet_global, id_parts, triplet_parts: weights of the ID / triplet terms on the
            global feature F_g and the concatenated parts F_c (official 1 each).
        attention: weight of L_attn (1). alignment: weight of L_align (0.35). diversity: weight of
            L_div (1). visibility: weight of L_vis (10). (The PCL weights belong to the memory banks.)
        label_smooth: ID label smoothing (0.1). triplet_margin: batch-hard margin (0.3).
        attention_temperature: L_attn target temperature (0.01). alignment_label_smooth: (0.1).
        diversity_mode: ``softmax`` (official) | ``mean`` (paper). focal_alpha, focal_gamma: (0.65, 2).
    """

    def __init__(self, *, id_global: float = 1.0, triplet_global: float = 1.0, id_parts: float = 1.0,
                 triplet_parts: float = 1.0, attention: float = 1.0, alignment: float = 0.35,
                 diversity: float = 1.0, visibility: float = 10.0, label_smooth: float = 0.1,
                 triplet_margin: float = 0.3,
                 attention_temperature: float = 0.01, alignment_label_smooth: float = 0.1,
                 diversity_mode: str = "softmax", focal_alpha: float = 0.65,
                 focal_gamma: float = 2.0) -> None:
        super().__init__()
        if diversity_mode not in LF.DIVERSITY_MODES:
            raise ValueError(f"diversity mode '{diversity_mode}' not in {LF.DIVERSITY_MODES}")
        self.weights: Dict[str, float] = {
            "loss_id_global": id_global, "loss_triplet_global": triplet_global, "loss_id_parts": id_parts,
            "loss_triplet_parts": triplet_parts, "loss_attention": attention, "loss_alignment": alignment,
            "loss_diversity": diversity, "loss_visibility": visibility,
        }
        self.label_smooth, self.triplet_margin = label_smooth, triplet_margin
        self.attention_temperature = attention_temperature
        self.alignment_label_smooth = alignment_label_smooth
        self.diversity_mode, self.focal_alpha, self.focal_gamma = diversity_mode, focal_alpha, focal_gamma

    def active(self, key: str) -> bool:
        """Whether the term ``key`` has a non-zero weight."""
        return self.weights[key] != 0.0

    def _mask_terms(self, out: ProFDOutput, targets: ProFDTargets) -> Dict[str, Tensor]:
        """L_attn and L_align, whose targets derive from the patch labels M_p."""
        terms: Dict[str, Tensor] = {}
        labels = targets.patch_labels.float()  # (N, K+1, h, w)
        if self.active("loss_attention"):
            if out.spa_attention is None:
                raise ValueError("loss_attention needs the SPA map; set profd.loss.attention 0 for "
                                 "profd.decoder.attention sea/none")
            num_queries, num_labels = out.spa_attention.shape[1], labels.shape[1]
            if num_queries not in (num_labels, num_labels + 1):
                raise ValueError(f"{num_queries} attention queries do not fit {num_labels} patch-label "
                                 "channels")
            # queries [bg, fg, parts] (K+2) or [bg, parts] (K+1): the layout follows from the shapes
            targets_attn = attention_targets(labels, has_foreground=num_queries == num_labels + 1,
                                             temperature=self.attention_temperature)  # (N, Q, L)
            terms["loss_attention"] = LF.spatial_attention_loss(out.spa_attention, targets_attn)
        if self.active("loss_alignment"):
            hard = alignment_labels(labels, tuple(targets.masks.shape[-2:]))  # (N, Hm, Wm)
            terms["loss_alignment"] = LF.alignment_loss(out.alignment_scores, hard,
                                                        self.alignment_label_smooth)
        return terms

    def forward(self, outputs: ProFDOutput, targets: ProFDTargets) -> Dict[str, Tensor]:
        """Compute the weighted loss terms.

        Args:
            outputs: train-mode model output.
            targets: the batch's identities, masks, visibility targets and patch labels.

        Returns:
            ``{key: weight * term}`` for every term with a non-zero weight, keys from ``CRITERION_KEYS``.
        """
        # Loss terms run in fp32 even under autocast (distances and logs are cancellation-prone in bf16/fp16).
        with torch.autocast(outputs.global_logits.device.type, enabled=False):
            return self._forward_fp32(_as_float(outputs), targets)

    def _forward_fp32(self, out: ProFDOutput, targets: ProFDTargets) -> Dict[str, Tensor]:
        pids = targets.pids
        terms: Dict[str, Tensor] = {}
        if self.active("loss_id_global"):
            terms["loss_id_global"] = LF.identity_loss(out.global_logits, pids, self.label_smooth)
        if self.active("loss_triplet_global"):
            terms["loss_triplet_global"] = LF.batch_hard_triplet_loss(out.global_feat, pids,
                                                                      self.triplet_margin)
        if self.active("loss_id_parts"):
            terms["loss_id_parts"] = LF.identity_loss(out.concat_logits, pids, self.label_smooth)
        if self.active("loss_triplet_parts"):
            concat = out.part_feats.flatten(1)  # (N, K*D) pre-BN
            terms["loss_triplet_parts"] = LF.batch_hard_triplet_loss(concat, pids, self.triplet_margin)
        terms.update(self._mask_terms(out, targets))
        if self.active("loss_diversity"):
            terms["loss_diversity"] = LF.diversity_loss(out.part_feats, self.diversity_mode)
        if self.active("loss_visibility"):
            terms["loss_visibility"] = LF.focal_visibility_loss(
                out.visibility_logits, targets.visibility[:, 1:], self.focal_alpha, self.focal_gamma)
        return {key: self.weights[key] * terms[key] for key in CRITERION_KEYS if key in terms}


def _as_float(outputs: ProFDOutput) -> ProFDOutput:
    """A copy of ``outputs`` with every floating-point tensor in fp32 (autograd flows through the casts)."""
    changes = {}
    for field in dataclasses.fields(outputs):
        value = getattr(outputs, field.name)
        if isinstance(value, Tensor) and value.is_floating_point() and value.dtype != torch.float32:
            changes[field.name] = value.float()
    return dataclasses.replace(outputs, **changes) if changes else outputs


#: Decoder modes (``profd.decoder.attention``) that produce the SPA map L_attn supervises.
_SPA_MODES = ("hybrid", "spa")


def build_profd_criterion(cfg: CfgNode) -> ProFDCriterion:
    """Build :class:`ProFDCriterion` from ``cfg.profd.loss`` (and ``profd.decoder.attention``).

    L_attn is switched off (weight 0) when ``profd.decoder.attention`` has no SPA branch (sea | none).
    """
    loss = cfg.profd.loss
    attention = loss.attention if cfg.profd.decoder.attention in _SPA_MODES else 0.0
    if attention != loss.attention:
        logger.info("profd.decoder.attention=%s has no SPA map: loss_attention disabled",
                    cfg.profd.decoder.attention)
    return ProFDCriterion(
        id_global=loss.id_global, triplet_global=loss.triplet_global, id_parts=loss.id_parts,
        triplet_parts=loss.triplet_parts, attention=attention, alignment=loss.alignment,
        diversity=loss.diversity, visibility=loss.visibility, label_smooth=loss.label_smooth,
        triplet_margin=loss.triplet_margin,
        attention_temperature=loss.attention_temperature, alignment_label_smooth=loss.alignment_label_smooth,
        diversity_mode=loss.diversity_mode, focal_alpha=loss.focal_alpha, focal_gamma=loss.focal_gamma)
