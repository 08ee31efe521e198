"""ProFDCriterion: model outputs + targets -> flat dict of weighted loss terms (paper Eq. 19).

Official total (Cuixxx/ProFD ``part_based_engine.py:111-221``):
L = CE_ls(global) + Tri(global) + CE_ls(concat) + Tri(concat) + L_attn + 0.35 L_align + PCL_g + PCL_p
    + L_div + 10 L_vis.
Every weight and temperature is a constructor argument (``cfg.profd.loss.*``); a term whose weight is 0
is not computed and not returned. The patch labels M_p (Eq. 6) are not the criterion's: it calls the
model's ``outputs.patch_labeler`` (geometry and ``profd.masks.patch_label_scale``), so they always match
the model's own pooling.

Shape shorthand:
    N: batch size
    K: number of body parts; Q: attention queries
    C: identities
    Hm, Wm: mask resolution
"""
from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Dict, Optional

import torch
from torch import Tensor, nn
from yacs.config import CfgNode

from ..modeling.targets import alignment_labels, attention_targets
from . import functional as LF

if TYPE_CHECKING:  # type hints only: modeling.memory imports losses.functional
    from ..modeling.memory import PrototypeMemory
    from ..modeling.outputs import ProFDOutput

__all__ = ["ProFDCriterion", "LOSS_KEYS", "build_profd_criterion"]

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss_id_global", "loss_triplet_global", "loss_id_parts", "loss_triplet_parts", "loss_attention",
             "loss_alignment", "loss_diversity", "loss_visibility", "loss_pcl_global", "loss_pcl_parts")


class ProFDCriterion(nn.Module):
    """All ProFD loss terms, each already multiplied by its weight.

    Args:
        id_global, triplet_global, id_parts, triplet_parts: weights of the ID / triplet terms on the
            global feature F_g and the concatenated parts F_c (official 1 each).
        attention: weight of L_attn (1). alignment: weight of L_align (0.35). diversity: weight of
            L_div (1). visibility: weight of L_vis (10). pcl_global, pcl_parts: weights of the PCL
            terms (1 each).
        label_smooth: ID label smoothing (0.1). triplet_margin: batch-hard margin (0.3).
        attention_temperature: L_attn target temperature (0.01). alignment_label_smooth: (0.1).
        diversity_mode: ``softmax`` (official) | ``mean`` (paper). focal_alpha, focal_gamma: (0.65, 2).
    """

    def __init__(self, *, id_global: float = 1.0, triplet_global: float = 1.0, id_parts: float = 1.0,
                 triplet_parts: float = 1.0, attention: float = 1.0, alignment: float = 0.35,
                 diversity: float = 1.0, visibility: float = 10.0, pcl_global: float = 1.0,
                 pcl_parts: float = 1.0, label_smooth: float = 0.1, triplet_margin: float = 0.3,
                 attention_temperature: float = 0.01, alignment_label_smooth: float = 0.1,
                 diversity_mode: str = "softmax", focal_alpha: float = 0.65,
                 focal_gamma: float = 2.0) -> None:
        super().__init__()
        if diversity_mode not in LF.DIVERSITY_MODES:
            raise ValueError(f"diversity mode '{diversity_mode}' not in {LF.DIVERSITY_MODES}")
        self.weights: Dict[str, float] = {
            "loss_id_global": id_global, "loss_triplet_global": triplet_global, "loss_id_parts": id_parts,
            "loss_triplet_parts": triplet_parts, "loss_attention": attention, "loss_alignment": alignment,
            "loss_diversity": diversity, "loss_visibility": visibility, "loss_pcl_global": pcl_global,
            "loss_pcl_parts": pcl_parts,
        }
        self.label_smooth, self.triplet_margin = label_smooth, triplet_margin
        self.attention_temperature = attention_temperature
        self.alignment_label_smooth = alignment_label_smooth
        self.diversity_mode, self.focal_alpha, self.focal_gamma = diversity_mode, focal_alpha, focal_gamma

    def active(self, key: str) -> bool:
        """Whether the term ``key`` has a non-zero weight."""
        return self.weights[key] != 0.0

    @property
    def uses_memory_global(self) -> bool:
        """Whether K_g is used (so the engine updates it)."""
        return self.active("loss_pcl_global")

    @property
    def uses_memory_parts(self) -> bool:
        """Whether K_p is used (so the engine updates it)."""
        return self.active("loss_pcl_parts")

    def _mask_terms(self, out: ProFDOutput, masks: Tensor) -> Dict[str, Tensor]:
        """L_attn and L_align, which need the patch labels (the model's M_p, via ``out.patch_labeler``)."""
        terms: Dict[str, Tensor] = {}
        if not (self.active("loss_attention") or self.active("loss_alignment")):
            return terms
        labels = out.patch_labeler(masks)  # (N, K+1, h, w)
        if self.active("loss_attention"):
            if out.spa_attention is None:
                raise ValueError("loss_attention needs the SPA map; set profd.loss.attention 0 for "
                                 "profd.decoder.attention sea/none")
            targets = attention_targets(labels, has_foreground=out.has_foreground,
                                        temperature=self.attention_temperature)  # (N, Q, L)
            terms["loss_attention"] = LF.spatial_attention_loss(out.spa_attention, targets)
        if self.active("loss_alignment"):
            hard = alignment_labels(labels, tuple(masks.shape[-2:]))  # (N, Hm, Wm)
            terms["loss_alignment"] = LF.alignment_loss(out.alignment_scores, hard,
                                                        self.alignment_label_smooth)
        return terms

    def _pcl_terms(self, out: ProFDOutput, pids: Tensor, memory_global: Optional[PrototypeMemory],
                   memory_parts: Optional[PrototypeMemory]) -> Dict[str, Tensor]:
        terms: Dict[str, Tensor] = {}
        for key, memory, feats in (("loss_pcl_global", memory_global, out.global_bn),
                                   ("loss_pcl_parts", memory_parts, out.concat_bn)):
            if self.active(key):
                if memory is None:
                    raise ValueError(f"{key} needs a memory bank; pass it or set its weight to 0")
                terms[key] = memory(feats, pids)
        return terms

    def forward(self, outputs: ProFDOutput, pids: Tensor, masks: Tensor, visibility: Tensor,
                memory_global: Optional[PrototypeMemory] = None,
                memory_parts: Optional[PrototypeMemory] = None) -> Dict[str, Tensor]:
        """Compute the weighted loss terms.

        Args:
            outputs: train-mode model output.
            pids: (N,) identities in [0, C).
            masks: (N, K+1, Hm, Wm) soft masks, channel 0 = background.
            visibility: (N, K+1) bool part visibility targets, column 0 = background.
            memory_global: K_g (``model.memory_global``), needed when ``pcl_global`` > 0.
            memory_parts: K_p (``model.memory_parts``), needed when ``pcl_parts`` > 0.

        Returns:
            ``{key: weight * term}`` for every term with a non-zero weight, keys from ``LOSS_KEYS``.
        """
        # Loss terms run in fp32 even under autocast (distances and logs are cancellation-prone in bf16/fp16).
        with torch.autocast(outputs.global_logits.device.type, enabled=False):
            return self._forward_fp32(_as_float(outputs), pids, masks.float(), visibility, memory_global,
                                      memory_parts)

    def _forward_fp32(self, out: ProFDOutput, pids: Tensor, masks: Tensor, visibility: Tensor,
                      memory_global: Optional[PrototypeMemory],
                      memory_parts: Optional[PrototypeMemory]) -> Dict[str, Tensor]:
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
        terms.update(self._mask_terms(out, masks))
        if self.active("loss_diversity"):
            terms["loss_diversity"] = LF.diversity_loss(out.part_feats, self.diversity_mode)
        if self.active("loss_visibility"):
            terms["loss_visibility"] = LF.focal_visibility_loss(out.visibility_logits, visibility[:, 1:],
                                                                self.focal_alpha, self.focal_gamma)
        terms.update(self._pcl_terms(out, pids, memory_global, memory_parts))
        return {key: self.weights[key] * terms[key] for key in LOSS_KEYS if key in terms}


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
        diversity=loss.diversity, visibility=loss.visibility, pcl_global=loss.pcl_global,
        pcl_parts=loss.pcl_parts,
        label_smooth=loss.label_smooth, triplet_margin=loss.triplet_margin,
        attention_temperature=loss.attention_temperature, alignment_label_smooth=loss.alignment_label_smooth,
        diversity_mode=loss.diversity_mode, focal_alpha=loss.focal_alpha, focal_gamma=loss.focal_gamma)
