"""Hybrid attention decoder (paper Sec. 4.2.1, Eq. 7-11, Fig. 3).

Exactly the official order (Cuixxx/ProFD ``PartFeatureDecoder`` / ``SemiAttentionDecoderLayer``,
``profd.py:192-295``). Inputs are projected once: mem = LN -> Linear -> LN (patches), q = LN -> Linear
(prompt set). Every layer reads the SAME, un-updated ``mem``:

1. E'_pat = K' = LN(mem + MHA(mem, q, q))                  reverse cross-attention, Eq. 7
2. a = SEA(q, mem) = MHA_8(q, mem, mem)                     semantic-aware attention, Eq. 10
3. b, A = SPA(q, mem) = MHA_1(Linear_spa(q), mem, mem)      spatial-aware attention, Eq. 8 (1 head)
4. x = LN(q + a + b)
5. x = x + MHA_8(x, K', K')                                 Eq. 11
6. x = x + Dropout(FFN(LN(x))), FFN = Linear -> GELU -> Dropout -> Linear
7. x = LN(x)

Output: LN -> Linear on x, and the SPA maps averaged over layers (supervised by L_attn, Eq. 9).
``nn.MultiheadAttention`` returns attention weights AFTER dropout in train mode (about 10% zeroed, the
rest scaled by 1/0.9); the official L_attn supervises that noisy map and so does this code. In eval
mode the maps are exact.

Ablations (``profd.decoder.attention``, paper Table 3): ``sea`` drops step 3 (x = LN(q + a)), ``spa``
drops step 2 (x = LN(q + b)); unused branches are not constructed.

Shape shorthand:
    N: batch size
    Q: queries (prompt set [bg, fg, parts], K+2)
    L: patch tokens, h * w
    D: width (512)
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from ..choices import ATTENTION_MODES

__all__ = ["HybridAttentionLayer", "HybridAttentionDecoder", "DecoderOutput", "DECODER_ATTENTION_MODES"]

#: std of the truncated-normal init of every ``nn.Linear`` (official ``profd.py:283-291``).
LINEAR_INIT_STD = 0.02
#: The SPA branch is a single-head attention so that its map is one distribution per query.
SPA_HEADS = 1
#: the ``profd.decoder.attention`` choices that build a decoder (``none`` builds none)
DECODER_ATTENTION_MODES = tuple(m for m in ATTENTION_MODES if m != "none")


class DecoderOutput(NamedTuple):
    """Decoder result.

    Attributes:
        tokens: (N, Q, D) output tokens, one per query.
        spa_attention: (N, Q, L) SPA map averaged over layers, or None without an SPA branch.
    """

    tokens: Tensor
    spa_attention: Optional[Tensor]


def _mha(dim: int, heads: int, dropout: float) -> nn.MultiheadAttention:
    return nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)


class HybridAttentionLayer(nn.Module):
    """One hybrid attention block (steps 1-7 of the module docstring).

    Args:
        dim: width D.
        num_heads: heads of the multi-head attentions (the SPA branch has one).
        dropout: attention and FFN dropout.
        ffn_ratio: FFN hidden width = ffn_ratio * D.
        use_sea: build the semantic-aware branch.
        use_spa: build the spatial-aware branch.
    """

    def __init__(self, dim: int, num_heads: int, *, dropout: float, ffn_ratio: int, use_sea: bool = True,
                 use_spa: bool = True) -> None:
        super().__init__()
        if not (use_sea or use_spa):
            raise ValueError("a hybrid attention layer needs at least one of SEA / SPA")
        self.reverse_attn = _mha(dim, num_heads, dropout)
        self.reverse_norm = nn.LayerNorm(dim)
        self.sea_attn = _mha(dim, num_heads, dropout) if use_sea else None
        self.spa_proj = nn.Linear(dim, dim) if use_spa else None
        self.spa_attn = _mha(dim, SPA_HEADS, dropout) if use_spa else None
        self.hybrid_norm = nn.LayerNorm(dim)
        self.cross_attn = _mha(dim, num_heads, dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_ratio * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_ratio * dim, dim))
        self.ffn_dropout = nn.Dropout(dropout)
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, queries: Tensor, memory: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Args: queries (N, Q, D), memory (N, L, D). Returns (N, Q, D) tokens and the (N, Q, L) SPA map."""
        reverse, _ = self.reverse_attn(memory, queries, queries, need_weights=False)  # (N, L, D)
        keys = self.reverse_norm(memory + reverse)  # (N, L, D) E'_pat
        x = queries
        if self.sea_attn is not None:
            x = x + self.sea_attn(queries, memory, memory, need_weights=False)[0]  # (N, Q, D)
        attention = None
        if self.spa_attn is not None:
            spa, attention = self.spa_attn(self.spa_proj(queries), memory, memory, need_weights=True)
            x = x + spa  # (N, Q, D); attention (N, Q, L)
        x = self.hybrid_norm(x)
        x = x + self.cross_attn(x, keys, keys, need_weights=False)[0]  # (N, Q, D)
        x = x + self.ffn_dropout(self.ffn(self.ffn_norm(x)))
        return self.out_norm(x), attention


class HybridAttentionDecoder(nn.Module):
    """Stack of :class:`HybridAttentionLayer` with the official input / output projections.

    Args:
        dim: width D of the prompts and patch features.
        num_layers: number of layers (official 2).
        num_heads: attention heads (official 8).
        dropout: dropout (official 0.1).
        ffn_ratio: FFN expansion (official 4).
        attention: ``hybrid`` | ``sea`` | ``spa`` (see the module docstring).
    """

    def __init__(self, dim: int, *, num_layers: int = 2, num_heads: int = 8, dropout: float = 0.1,
                 ffn_ratio: int = 4, attention: str = "hybrid") -> None:
        super().__init__()
        if attention not in DECODER_ATTENTION_MODES:
            raise ValueError(f"decoder attention '{attention}' not in {DECODER_ATTENTION_MODES}")
        self.attention = attention
        self.memory_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.query_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.layers = nn.ModuleList([
            HybridAttentionLayer(dim, num_heads, dropout=dropout, ffn_ratio=ffn_ratio,
                                 use_sea=attention != "spa", use_spa=attention != "sea")
            for _ in range(num_layers)
        ])
        self.out_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.apply(_init_weights)

    def forward(self, prompts: Tensor, patches: Tensor) -> DecoderOutput:
        """Decode part tokens.

        Args:
            prompts: (Q, D) prompt set (shared by the batch) or (N, Q, D).
            patches: (N, L, D) patch features E_pat.

        Returns:
            :class:`DecoderOutput` with tokens (N, Q, D) and the layer-averaged SPA map (N, Q, L).
        """
        if prompts.dim() == 2:
            prompts = prompts.unsqueeze(0).expand(patches.shape[0], -1, -1)  # (N, Q, D)
        memory = self.memory_proj(patches)  # (N, L, D), the same for every layer
        x = self.query_proj(prompts)  # (N, Q, D)
        maps: List[Tensor] = []
        for layer in self.layers:
            x, attention = layer(x, memory)
            if attention is not None:
                maps.append(attention)
        spa = torch.stack(maps).mean(dim=0) if maps else None  # (N, Q, L)
        return DecoderOutput(self.out_proj(x), spa)


def _init_weights(module: nn.Module) -> None:
    """trunc_normal(0.02) Linear weights (incl. MHA out_proj) with zero bias, LayerNorm (1, 0).

    The packed MHA input projection keeps PyTorch's xavier-uniform init, as in the official code.
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=LINEAR_INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
