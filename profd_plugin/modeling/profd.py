"""ProFD: CLIP backbone -> part prompts -> hybrid attention decoder -> heads (paper Sec. 4, Fig. 2).

Official code: ``build_transformer`` (Cuixxx/ProFD ``torchreid/models/profd.py``), without its unused
modules (second CLIP visual copy, prompt encoder, context decoder, dimension-reduction layers, extra
classifiers). The losses live in :mod:`profd_plugin.losses`; the memory banks (:class:`MemoryBanks`,
``self.memory``) are model state and own their PCL terms, initialisation and update.

Train-mode ``forward`` returns :class:`ProFDOutput`, eval-mode ``forward`` returns
:class:`ProFDEmbeddings`.

Shape shorthand:
    N: batch size
    K: number of body parts
    Q: prompt set / decoder queries, [bg, fg, parts] = K+2 (K+1 without a foreground word)
    D: joint embedding width (512 for ViT-B/16, 1024 for RN50); C: identities
    H, W: image size; h, w: patch grid (the ResNet's feature map); L = h * w
    Hm, Wm: mask resolution
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Set, Tuple, Union

import torch
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from torch import Tensor, nn

from ..choices import ATTENTION_MODES
from .clip_backbone import build_visual_backbone
from .decoder import HybridAttentionDecoder
from .heads import (
    BNNeck,
    IdentityClassifier,
    PartBatchNorm,
    VisibilityHead,
    alignment_scores,
    visibility_scores,
)
from .memory import MemoryBanks
from .outputs import ProFDEmbeddings, ProFDOutput
from .prompts import ClipTextEncoder, PartPromptLearner
from .targets import patch_labels, weighted_average_pooling

__all__ = ["ProFD", "ATTENTION_MODES"]

_BACKBONE_PREFIX = "backbone."


class _Features(NamedTuple):
    cls: Tensor  # (N, D)
    part_feats: Tensor  # (N, K, D) pre-BN
    spa_attention: Optional[Tensor]  # (N, Q, L)
    alignment_scores: Optional[Tensor]  # (N, K+1, h, w)


class ProFD(nn.Module):
    """Prompt-guided feature disentangling model.

    Args:
        clip: an open_clip ``CLIP`` with weights loaded (``clip_backbone.create_clip``), ViT or ResNet
            visual tower (``clip_backbone.build_visual_backbone``). Its visual tower and text tower are
            taken over; its token embedding is used once to build the prompt
            buffers and not kept.
        num_classes: C training identities (classifiers and memory banks).
        part_names: ordered part names (``data.masks.part_names(grouping)``).
        image_size: (H, W) input size.
        stride: ``profd.clip.stride``: the ViT's patch-embedding stride (16, or 12 for ProFD*), or the
            ResNet's output stride (16 = last stride 1 as CLIP-ReID, or 32).
        n_ctx, class_specific_ctx, foreground_word, learnable_background, train_text_encoder: see
            :class:`~profd_plugin.modeling.prompts.PartPromptLearner`.
        decoder_layers, decoder_heads, decoder_dropout, ffn_ratio: decoder size (official 2, 8, 0.1, 4).
        attention: ``hybrid`` | ``sea`` | ``spa`` | ``none`` (no decoder: part features are the weighted
            average pooling of the patch features with the patch labels of ``masks`` when given, else
            with the softmax of the alignment scores).
        alignment_logit_scale: S = scale * cos (Eq. 5, official 5).
        patch_label_scale: M_p = softmax(scale * AvgPool(masks)) (official 64); the model owns the patch
            labels (:meth:`patch_labels`), its own pooling and the criterion's targets use them.
        visibility_mode, visibility_temperature, visibility_threshold: test-time visibility
            (see :func:`~profd_plugin.modeling.heads.visibility_scores`).
        pcl_temperature, pcl_momentum, pcl_update, pcl_global, pcl_parts: memory banks and the
            weights of their PCL terms (see :class:`~profd_plugin.modeling.memory.MemoryBanks`).
        tokenizer: CLIP tokenizer (default: open_clip's BPE ``SimpleTokenizer``, offline).
    """

    def __init__(self, clip: CLIP, num_classes: int, *, part_names: Sequence[str],
                 image_size: Tuple[int, int] = (256, 128), stride: int = 16, n_ctx: int = 16,
                 class_specific_ctx: bool = True, foreground_word: str = "people",
                 learnable_background: bool = False, train_text_encoder: bool = True,
                 decoder_layers: int = 2, decoder_heads: int = 8, decoder_dropout: float = 0.1,
                 ffn_ratio: int = 4, attention: str = "hybrid",
                 alignment_logit_scale: float = 5.0, patch_label_scale: float = 64.0,
                 visibility_mode: str = "softmax", visibility_temperature: float = 0.1,
                 visibility_threshold: float = 0.1, pcl_temperature: float = 0.05, pcl_momentum: float = 0.2,
                 pcl_update: str = "hard", pcl_global: float = 1.0, pcl_parts: float = 1.0,
                 tokenizer: Optional[SimpleTokenizer] = None) -> None:
        super().__init__()
        if attention not in ATTENTION_MODES:
            raise ValueError(f"profd.decoder.attention '{attention}' not in {ATTENTION_MODES}")
        if not part_names:
            raise ValueError("ProFD needs at least one part")
        self.num_classes, self.num_parts, self.attention = num_classes, len(part_names), attention
        self.train_text_encoder = train_text_encoder
        self.alignment_logit_scale, self.patch_label_scale = alignment_logit_scale, patch_label_scale
        self.visibility_mode, self.visibility_temperature = visibility_mode, visibility_temperature
        self.visibility_threshold = visibility_threshold

        self.backbone = build_visual_backbone(clip.visual, image_size=image_size, stride=stride)
        dim = self.embed_dim = self.backbone.embed_dim
        self.prompt_learner = PartPromptLearner(
            part_names=part_names, text_encoder=ClipTextEncoder.from_clip(clip),
            token_embedding=clip.token_embedding,
            tokenizer=tokenizer or SimpleTokenizer(context_length=clip.context_length), embed_dim=dim,
            n_ctx=n_ctx, class_specific=class_specific_ctx, foreground_word=foreground_word,
            learnable_background=learnable_background, train_text_encoder=train_text_encoder)
        self.decoder = None if attention == "none" else HybridAttentionDecoder(
            dim, num_layers=decoder_layers, num_heads=decoder_heads, dropout=decoder_dropout,
            ffn_ratio=ffn_ratio, attention=attention)
        concat_dim = self.num_parts * dim
        self.bnneck_global = BNNeck(dim)
        self.bnneck_concat = BNNeck(concat_dim)
        self.classifier = IdentityClassifier(dim, concat_dim, num_classes)
        self.part_bn = PartBatchNorm(self.num_parts, dim)
        self.visibility_head = VisibilityHead(self.num_parts, dim)
        self.memory = MemoryBanks(num_classes, dim, concat_dim, temperature=pcl_temperature,
                                  momentum=pcl_momentum, update=pcl_update, weight_global=pcl_global,
                                  weight_parts=pcl_parts)
        self.apply_trainability()

    # ------------------------------------------------------------------ properties
    @property
    def grid_size(self) -> Tuple[int, int]:
        """(h, w) patch grid of the built input size (an eval input of another size has
        ``backbone.grid_for(images.shape[-2:])``)."""
        return self.backbone.grid_size

    @property
    def has_foreground(self) -> bool:
        """Whether the prompt set has a foreground prompt."""
        return self.prompt_learner.has_foreground

    def patch_labels(self, masks: Tensor, image_size: Optional[Tuple[int, int]] = None) -> Tensor:
        """Patch labels M_p = softmax_c(patch_label_scale * AvgPool(masks)) on the patch grid (Eq. 6).

        The single source of M_p: the model's own pooling (memory init, ``none`` mode) and the
        criterion's L_attn / L_align targets (the engine passes them in ``ProFDTargets``) use it.

        Args:
            masks: (N, K+1, Hm, Wm) soft masks, channel 0 = background.
            image_size: (H, W) of the images the masks belong to (default: the built size); an eval
                input of another size has another patch grid.

        Returns:
            (N, K+1, h, w) patch labels.
        """
        bb = self.backbone
        size = tuple(image_size) if image_size is not None else bb.image_size
        return patch_labels(masks, grid_size=bb.grid_for(size), image_size=size, patch_size=bb.patch_size,
                            stride=bb.stride, label_scale=self.patch_label_scale)

    # ------------------------------------------------------------------ forward
    def _features(self, images: Tensor, masks: Optional[Tensor], need_alignment: bool) -> _Features:
        cls, patches = self.backbone(images)  # (N, D), (N, L, D)
        size = tuple(images.shape[-2:])  # eval may use any size: the input's patch grid
        prompts = self.prompt_learner()  # (Q, D)
        scores = None
        if need_alignment or (self.decoder is None and masks is None):
            align_prompts = prompts[self.prompt_learner.alignment_index()]  # (K+1, D)
            scores = alignment_scores(patches, align_prompts, self.backbone.grid_for(size),
                                      self.alignment_logit_scale)
        if self.decoder is not None:
            tokens, spa = self.decoder(prompts, patches)  # (N, Q, D), (N, Q, L)
            return _Features(cls, tokens[:, -self.num_parts:], spa, scores)
        # (N, K+1, h, w) pooling weights: patch labels of the masks, else the predicted alignment maps
        weights = self.patch_labels(masks, size) if masks is not None else torch.softmax(scores, dim=1)
        return _Features(cls, weighted_average_pooling(patches, weights[:, 1:]), None, scores)

    def forward(self, images: Tensor, masks: Optional[Tensor] = None,
                return_attention: bool = False) -> Union[ProFDOutput, ProFDEmbeddings]:
        """Run the model.

        Args:
            images: (N, 3, H, W) normalised images: the built size in train mode, any size >= the patch
                size in eval mode (patch grid ``backbone.grid_for((H, W))``).
            masks: optional (N, K+1, Hm, Wm) soft masks; used only by ``attention='none'`` (pooling
                weights; without masks the alignment head's softmax maps are used).
            return_attention: eval mode only, also return the (N, Q, L) SPA map.

        Returns:
            Train mode: :class:`ProFDOutput` (everything the criterion needs).
            Eval mode: :class:`ProFDEmbeddings` (BNNeck global, per-part BN parts, test visibility).
        """
        if self.training and tuple(images.shape[-2:]) != self.backbone.image_size:
            raise ValueError(f"training input size {tuple(images.shape[-2:])} is not the built size "
                             f"{self.backbone.image_size}: the patch labels and attention targets are on the "
                             f"built grid; build the model at this size or call "
                             f"model.backbone.set_image_size first")
        feats = self._features(images, masks, need_alignment=self.training)
        vis_logits = self.visibility_head(feats.part_feats)  # (N, K)
        global_bn = self.bnneck_global(feats.cls)  # (N, D)
        if not self.training:
            visibility = visibility_scores(vis_logits, mode=self.visibility_mode,
                                           temperature=self.visibility_temperature,
                                           threshold=self.visibility_threshold)  # (N, K)
            return ProFDEmbeddings(global_bn, self.part_bn(feats.part_feats), visibility,
                                   feats.spa_attention if return_attention else None)
        self.part_bn(feats.part_feats.detach())  # running statistics only (test-time per-part BN)
        concat_bn = self.bnneck_concat(feats.part_feats.flatten(1))  # (N, K*D)
        global_logits, concat_logits = self.classifier(global_bn, concat_bn)  # (N, C) each
        return ProFDOutput(
            global_feat=feats.cls, global_bn=global_bn, global_logits=global_logits,
            part_feats=feats.part_feats, concat_bn=concat_bn, concat_logits=concat_logits,
            visibility_logits=vis_logits, spa_attention=feats.spa_attention,
            alignment_scores=feats.alignment_scores)

    @torch.no_grad()
    def pooled_part_features(self, images: Tensor, masks: Tensor) -> Tuple[Tensor, Tensor]:
        """Features of the memory-bank init pass (official ``profd.py:569-573``, Eq. 17 "Init").

        Runs in eval mode (restoring the previous mode): the BNNeck global feature and the weighted
        average pooling of the patch features with the K part channels of the patch labels M_p,
        concatenated and passed through the concat BNNeck.

        Args:
            images: (N, 3, H, W) images.
            masks: (N, K+1, Hm, Wm) soft masks.

        Returns:
            global_bn: (N, D); masked_concat_bn: (N, K*D).
        """
        was_training = self.training
        self.eval()
        try:
            cls, patches = self.backbone(images)  # (N, D), (N, L, D)
            labels = self.patch_labels(masks, tuple(images.shape[-2:]))  # (N, K+1, h, w)
            parts = weighted_average_pooling(patches, labels[:, 1:])  # (N, K, D)
            return self.bnneck_global(cls), self.bnneck_concat(parts.flatten(1))
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ training policy
    def apply_trainability(self) -> None:
        """(Re)apply the frozen flags: BNNeck biases, and the text encoder unless it is trained.

        Call again after anything that sets ``requires_grad`` on all parameters (e.g. torchreid's
        ``open_all_layers``). The fixed background vector is a buffer and needs no flag.
        """
        self.prompt_learner.text_encoder.requires_grad_(self.train_text_encoder)
        for neck in (self.bnneck_global, self.bnneck_concat):
            neck.bn.bias.requires_grad_(False)

    def no_weight_decay(self) -> Set[str]:
        """Parameter names exempt from weight decay: biases, norms (all <= 1-D parameters), the prompt
        context, the background vector and the positional / class embeddings (the backbone's
        ``no_weight_decay_names``)."""
        names = {name for name, p in self.named_parameters() if p.ndim <= 1}
        embeddings = (*(_BACKBONE_PREFIX + name for name in self.backbone.no_weight_decay_names()),
                      "prompt_learner.ctx", "prompt_learner.background",
                      "prompt_learner.text_encoder.positional_embedding")
        params = dict(self.named_parameters())
        return names | {name for name in embeddings if name in params}

    def param_groups(self, base_lr: float, weight_decay: float, *, backbone_lr_mult: float = 0.1,
                     no_decay_bias_norm: bool = True) -> List[dict]:
        """Optimizer parameter groups (official staged lr: visual encoder at lr x 0.1, the rest at lr).

        Args:
            base_lr: learning rate of prompts, text encoder, decoder and heads.
            weight_decay: weight decay of the decayed groups.
            backbone_lr_mult: visual-encoder lr multiplier (``profd.optim.backbone_lr_mult``).
            no_decay_bias_norm: exempt :meth:`no_weight_decay` parameters (official: decay all).

        Returns:
            Up to four groups (``name`` in backbone/head x decay/no_decay) with ``params``, ``lr`` and
            ``weight_decay``; frozen parameters are excluded; every trainable parameter appears once.
        """
        exempt = self.no_weight_decay() if no_decay_bias_norm else set()
        buckets = {(part, decay): [] for part in ("backbone", "head") for decay in (True, False)}
        for name, param in self.named_parameters():
            if param.requires_grad:
                part = "backbone" if name.startswith(_BACKBONE_PREFIX) else "head"
                buckets[(part, name not in exempt)].append(param)
        groups = []
        for (part, decay), params in buckets.items():
            if params:
                groups.append({"name": f"{part}_{'decay' if decay else 'no_decay'}", "params": params,
                               "lr": base_lr * (backbone_lr_mult if part == "backbone" else 1.0),
                               "weight_decay": weight_decay if decay else 0.0})
        return groups

    def num_inference_params(self) -> int:
        """Parameters used at test time: visual encoder, decoder, BNNeck, per-part BN, visibility head.

        The text encoder and prompt context are excluded (the prompt set does not depend on the image and
        is computed once), as are the training-only identity classifiers and concat BNNeck.
        """
        modules = [self.backbone, self.decoder, self.bnneck_global, self.part_bn, self.visibility_head]
        return sum(p.numel() for m in modules if m is not None for p in m.parameters())
