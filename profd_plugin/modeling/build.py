"""Model builders: where ``cfg.profd.*`` becomes the model's constructor keyword arguments.

(The criterion's cfg mapping is ``losses.criterion.build_profd_criterion``, kept next to its class:
``modeling`` and ``losses`` never import each other. ``profd.masks.patch_label_scale`` is read here only:
the model owns the patch labels M_p (``ProFD.patch_labels``); ``profd.loss.pcl_*`` are read here too,
because the memory banks that compute the PCL terms are model state.)

- :func:`build_profd_model` (the rich path used by ``tools/main.py``),
- :func:`profd_torchreid_factory`, a torchreid model factory (``model.name=profd`` inside torchreid's own
  engines) returning :class:`ProFDTorchreidAdapter`.

Shape shorthand:
    N: batch size; K: number of body parts; D: embedding width; C: identities
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode

from ..choices import HOST_LOSSES as TORCHREID_LOSSES
from ..data.masks import part_names
from .clip_backbone import PLUGIN_CLIP_CONFIGS, create_clip
from .outputs import ProFDEmbeddings
from .profd import ProFD

__all__ = ["build_profd_model", "profd_torchreid_factory", "ProFDTorchreidAdapter",
           "torchreid_embedding", "model_kwargs"]


def model_kwargs(cfg: CfgNode) -> Dict[str, Any]:
    """ProFD constructor keyword arguments from ``cfg`` (everything except the CLIP model and C)."""
    p = cfg.profd
    return dict(
        part_names=part_names(p.masks.grouping), image_size=(cfg.data.height, cfg.data.width),
        stride=p.clip.stride, n_ctx=p.prompt.n_ctx, class_specific_ctx=p.prompt.class_specific,
        foreground_word=p.prompt.foreground_word,
        learnable_background=p.prompt.learnable_background, train_text_encoder=p.prompt.train_text_encoder,
        decoder_layers=p.decoder.num_layers, decoder_heads=p.decoder.num_heads,
        decoder_dropout=p.decoder.dropout,
        ffn_ratio=p.decoder.ffn_ratio, attention=p.decoder.attention,
        alignment_logit_scale=p.loss.alignment_logit_scale, patch_label_scale=p.masks.patch_label_scale,
        visibility_mode=p.visibility.test_mode, visibility_temperature=p.visibility.temperature,
        visibility_threshold=p.visibility.threshold, pcl_temperature=p.loss.pcl_temperature,
        pcl_momentum=p.loss.pcl_momentum, pcl_update=p.loss.pcl_update, pcl_global=p.loss.pcl_global,
        pcl_parts=p.loss.pcl_parts,
    )


def _create_clip(cfg: CfgNode, pretrained: Optional[str] = None):
    c = cfg.profd.clip
    source = c.pretrained if pretrained is None else pretrained
    return create_clip(c.name, source, cache_dir=c.cache_dir or None, quick_gelu=c.quick_gelu)


def build_profd_model(cfg: CfgNode, num_classes: int) -> ProFD:
    """Build ProFD from ``cfg`` (``cfg.profd.*``, ``cfg.data.height/width``) with C = ``num_classes``."""
    return ProFD(_create_clip(cfg), num_classes, **model_kwargs(cfg))


def torchreid_embedding(emb: ProFDEmbeddings) -> Tensor:
    """One (N, (K+1)*D) vector per image for torchreid's distance code.

    [g/|g|, v_1 p_1/|p_1|, ..., v_K p_K/|p_K|]: the dot product of two such vectors is
    cos_g + sum_k v^q_k v^g_k cos_k, the visibility-weighted similarity of Eq. 14 (numerator, with
    w_k = v^q_k v^g_k and w_0 = 1).
    """
    parts = F.normalize(emb.part_feats, dim=-1) * emb.visibility.unsqueeze(-1)  # (N, K, D)
    return torch.cat([F.normalize(emb.global_feat, dim=-1), parts.flatten(1)], dim=1)


class ProFDTorchreidAdapter(ProFD):
    """ProFD with torchreid's model interface (``model.name=profd`` in torchreid's own engines).

    Eval ``forward`` returns one (N, (K+1)*D) tensor (:func:`torchreid_embedding`). Train ``forward``
    returns the global identity logits (``loss='softmax'``) or ``(logits, global feature)``
    (``loss='triplet'``): torchreid's engines give no masks, so only the global branch is trained there;
    the decoder, prompts and part heads then keep their initial weights (use ``tools/main.py`` and
    ``ProFDEngine`` for the full method).

    Args:
        loss: ``softmax`` | ``triplet`` (torchreid's ``loss`` argument).
        *args, **kwargs: as :class:`ProFD`.
    """

    def __init__(self, *args: Any, loss: str = "softmax", **kwargs: Any) -> None:
        if loss not in TORCHREID_LOSSES:
            raise ValueError(f"torchreid loss '{loss}' not supported by profd; use one of {TORCHREID_LOSSES}")
        super().__init__(*args, **kwargs)
        self.loss = loss

    def forward(self, images: Tensor) -> Union[Tensor, Tuple[Tensor, Tensor]]:  # type: ignore[override]
        """Eval: (N, (K+1)*D) embedding. Train: logits (N, C), or (logits, (N, D) feature) for triplet."""
        if not self.training:
            return torchreid_embedding(super().forward(images))
        cls, _ = self.backbone(images)  # (N, D)
        logits = self.classifier.global_fc(self.bnneck_global(cls))  # (N, C)
        return logits if self.loss == "softmax" else (logits, cls)


def profd_torchreid_factory(num_classes: int, loss: str = "softmax", pretrained: bool = True,
                            use_gpu: bool = True, **kwargs: Any) -> ProFDTorchreidAdapter:
    """torchreid model factory for ProFD, built with the default settings.

    Args:
        num_classes: training identities.
        loss: ``softmax`` | ``triplet``.
        pretrained: True = CLIP weights from ``profd.clip.pretrained`` (default ``openai``; ``none``
            becomes ``openai``; the ``tiny`` CLIP has no released weights: ValueError), False = random init
            (never downloads anything).
        use_gpu: ignored (the caller moves the model).
        **kwargs: optional ``cfg`` (a full config, default ``get_default_config()``) and ``opts``
            (``['profd.clip.name', 'tiny', ...]`` overrides).

    The returned model's ``build_config`` is the (frozen) config it was built with, so that a loader can
    check a checkpoint against it (``checkpoint.load_into_built_model``).
    """
    from ..config import get_default_config  # deferred: config is independent of modeling

    cfg: Optional[CfgNode] = kwargs.pop("cfg", None)
    opts: Sequence[str] = kwargs.pop("opts", ())
    if kwargs:
        raise TypeError(f"profd_torchreid_factory got unexpected arguments {sorted(kwargs)}")
    cfg = (cfg or get_default_config()).clone()
    cfg.defrost()
    cfg.merge_from_list(list(opts))
    source = cfg.profd.clip.pretrained
    source = ("openai" if source.lower() == "none" else source) if pretrained else "none"
    if source == "openai" and cfg.profd.clip.name in PLUGIN_CLIP_CONFIGS:
        raise ValueError(f"the tiny CLIP '{cfg.profd.clip.name}' (profd_tiny, profd_tiny_vit) has no "
                         f"pretrained weights: build it with pretrained=False, or give torchreid's "
                         f"FeatureExtractor a model_path that exists")
    model = ProFDTorchreidAdapter(_create_clip(cfg, source), num_classes, loss=loss, **model_kwargs(cfg))
    cfg.freeze()
    model.build_config = cfg
    return model
