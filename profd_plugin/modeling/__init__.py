"""The ProFD model: CLIP backbone (ViT or ResNet), part prompts, hybrid attention decoder, heads, memory.

Public API: :func:`build_profd_model` (cfg -> model), :func:`profd_torchreid_factory` (torchreid
factory), :class:`ProFD`, its outputs
:class:`ProFDOutput` / :class:`ProFDEmbeddings`, and the memory banks :class:`MemoryBanks`.
"""
from .build import ProFDTorchreidAdapter, build_profd_model, profd_torchreid_factory, torchreid_embedding
from .clip_backbone import (
    ClipResNetBackbone,
    ClipVisualBackbone,
    build_visual_backbone,
    create_clip,
    resize_pos_embed,
)
from .decoder import HybridAttentionDecoder
from .memory import MemoryBanks, PrototypeMemory
from .outputs import ProFDEmbeddings, ProFDOutput
from .profd import ProFD
from .prompts import PartPromptLearner
from .visual import VisualBackbone

__all__ = [
    "build_profd_model", "profd_torchreid_factory", "ProFDTorchreidAdapter",
    "torchreid_embedding", "ProFD", "ProFDOutput", "ProFDEmbeddings", "MemoryBanks", "PrototypeMemory",
    "VisualBackbone", "ClipVisualBackbone", "ClipResNetBackbone", "build_visual_backbone", "create_clip",
    "resize_pos_embed", "HybridAttentionDecoder", "PartPromptLearner",
]
