"""Part-specific text prompts (paper Sec. 4.1.1, Eq. 2/4) and the CLIP text encoder E_t.

Official code: ``PromptLearnerPose`` and ``TextEncoder`` (Cuixxx/ProFD ``profd.py:347-366, 797-882``).
Each prompt is ``SOS, v_1..v_M, <part name tokens>, '.', EOT, padding``: the M context vectors are
learnable (class-specific per prompt, official CSC=True, or shared as in Eq. 4), everything else is a
frozen buffer taken from CLIP's token embedding. The encoder is the CLIP text transformer with its
positional embedding, ``ln_final``, EOT pooling and ``text_projection``. Prompt features do not depend on
the image: they are computed once per forward and cached in eval mode.

The prompt set fed to the decoder is E_pro = [background, foreground, parts]: a background vector
(N(0, 1), fixed as the official code effectively has it, or learnable) and the foreground word
(official 'people'; omitted when empty).

Shape shorthand:
    P: number of text prompts (foreground + K parts)
    K: number of body parts
    Q: prompt-set size, 1 + P (background + prompts)
    M: context length ``n_ctx``; T: text context length (77)
    Wt: text transformer width (512); D: joint embedding width (512)
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["ClipTextEncoder", "PartPromptLearner", "prompt_words"]

#: std of the random context init (official ``profd.py:829``, CoOp).
CTX_INIT_STD = 0.02
#: Placeholder word whose token positions the learnable context replaces (CoOp convention).
CTX_PLACEHOLDER = "X"


def prompt_words(part_names: Sequence[str], foreground_word: str = "") -> List[str]:
    """Prompt words: [foreground word if non-empty] + part names with underscores replaced by spaces."""
    words = [foreground_word] if foreground_word else []
    return words + [name.replace("_", " ") for name in part_names]


class ClipTextEncoder(nn.Module):
    """CLIP text transformer applied to prompt token embeddings (official ``TextEncoder``).

    Args:
        transformer: open_clip text ``Transformer`` (batch first).
        positional_embedding: (T, Wt) positional embedding parameter.
        ln_final: final LayerNorm.
        text_projection: (Wt, D) projection parameter (or an ``nn.Linear``).
        attn_mask: (T, T) causal mask (additive), or None.
    """

    def __init__(self, *, transformer: nn.Module, positional_embedding: nn.Parameter, ln_final: nn.Module,
                 text_projection: nn.Module, attn_mask: Optional[Tensor]) -> None:
        super().__init__()
        self.transformer = transformer
        self.positional_embedding = positional_embedding
        self.ln_final = ln_final
        self.text_projection = text_projection
        self.register_buffer("attn_mask", attn_mask, persistent=False)

    @classmethod
    def from_clip(cls, clip: nn.Module) -> "ClipTextEncoder":
        """Take over the text tower of an open_clip ``CLIP`` (its token embedding is not kept)."""
        return cls(transformer=clip.transformer, positional_embedding=clip.positional_embedding,
                   ln_final=clip.ln_final, text_projection=clip.text_projection, attn_mask=clip.attn_mask)

    def forward(self, token_embeds: Tensor, eot_index: Tensor) -> Tensor:
        """Encode prompts.

        Args:
            token_embeds: (P, T, Wt) prompt token embeddings.
            eot_index: (P,) position of the EOT token of each prompt.

        Returns:
            (P, D) text features (not normalised).
        """
        x = token_embeds + self.positional_embedding.to(token_embeds.dtype)  # (P, T, Wt)
        mask = self.attn_mask.to(x.dtype) if self.attn_mask is not None else None
        x = self.ln_final(self.transformer(x, attn_mask=mask))  # (P, T, Wt)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]  # (P, Wt)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection  # (P, D)


class PartPromptLearner(nn.Module):
    """Learnable part prompts -> prompt set E_pro = [background, foreground, parts] (Q, D).

    Args:
        part_names: ordered part names (``data.masks.part_names(grouping)``).
        text_encoder: the CLIP text encoder (trainable or frozen, see ``train_text_encoder``).
        token_embedding: CLIP token embedding, used only here to build the frozen prefix/suffix buffers.
        tokenizer: CLIP tokenizer, ``tokenizer(list_of_str) -> (P, T) long``.
        embed_dim: D, width of the text features (and of the background vector).
        n_ctx: M learnable context tokens per prompt (``profd.prompt.n_ctx``).
        class_specific: one context per prompt (official CSC=True) or one shared context (Eq. 4).
        foreground_word: extra foreground prompt word (official 'people'); '' for none.
        learnable_background: background vector is a parameter (True) or a fixed buffer (official).
        train_text_encoder: whether the text encoder's weights are trained (official) or frozen (paper).
    """

    def __init__(self, *, part_names: Sequence[str], text_encoder: ClipTextEncoder,
                 token_embedding: nn.Embedding, tokenizer: Callable[[List[str]], Tensor], embed_dim: int,
                 n_ctx: int = 16, class_specific: bool = True, foreground_word: str = "people",
                 learnable_background: bool = False, train_text_encoder: bool = True) -> None:
        super().__init__()
        if n_ctx < 0:
            raise ValueError(f"n_ctx must be >= 0, got {n_ctx}")
        words = prompt_words(part_names, foreground_word)
        self.num_parts = len(part_names)
        self.has_foreground = bool(foreground_word)
        self.n_ctx = n_ctx
        self.text_encoder = text_encoder
        self.text_encoder.requires_grad_(train_text_encoder)

        prefix_text = " ".join([CTX_PLACEHOLDER] * n_ctx)
        tokens = tokenizer([f"{prefix_text} {word}.".strip() for word in words])  # (P, T)
        if int(tokens.argmax(dim=-1).min()) <= n_ctx + 1:
            raise ValueError(f"prompts with n_ctx={n_ctx} do not fit the {tokens.shape[1]}-token context")
        width = token_embedding.weight.shape[1]
        with torch.no_grad():
            embeds = token_embedding(tokens.to(token_embedding.weight.device)).float()  # (P, T, Wt)
        self.register_buffer("token_prefix", embeds[:, :1].clone())  # (P, 1, Wt) SOS
        # (P, T-1-M, Wt): name tokens, '.', EOT, padding
        self.register_buffer("token_suffix", embeds[:, 1 + n_ctx:].clone())
        self.register_buffer("eot_index", tokens.argmax(dim=-1))  # (P,) EOT has the largest token id
        ctx_shape = (len(words), n_ctx, width) if class_specific else (n_ctx, width)
        self.ctx = nn.Parameter(torch.empty(ctx_shape).normal_(std=CTX_INIT_STD))  # (P, M, Wt) or (M, Wt)

        background = torch.randn(1, embed_dim)  # (1, D), official N(0, 1) ``background_cls``
        if learnable_background:
            self.background = nn.Parameter(background)
        else:
            self.register_buffer("background", background)
        self._cache: Optional[Tuple[tuple, Tensor]] = None

    @property
    def num_queries(self) -> int:
        """Q = 1 (background) + [1 foreground] + K."""
        return 1 + int(self.has_foreground) + self.num_parts

    def alignment_index(self) -> List[int]:
        """Indices of [background, parts] in the prompt set (the foreground is not a segmentation class)."""
        first_part = self.num_queries - self.num_parts
        return [0] + list(range(first_part, self.num_queries))

    def encode_prompts(self) -> Tensor:
        """Run the text encoder on the learnable prompts: (P, D) features, foreground first."""
        num_prompts = self.token_prefix.shape[0]
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(num_prompts, -1, -1)
        ctx = ctx.to(self.token_prefix.dtype)  # (P, M, Wt)
        embeds = torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)  # (P, T, Wt)
        return self.text_encoder(embeds, self.eot_index)  # (P, D)

    def _cache_key(self) -> tuple:
        tensors = [self.ctx, self.background, self.token_prefix, self.token_suffix,
                   *self.text_encoder.parameters()]
        device = self.ctx.device.type  # autocast changes the dtype of the cached result
        autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        versions = tuple((t.data_ptr(), t._version) for t in tensors)
        return versions + (self.ctx.device, self.ctx.dtype, autocast)

    def forward(self) -> Tensor:
        """Prompt set E_pro = [background, foreground, parts]: (Q, D).

        In eval mode with gradients disabled the result is cached; the cache is keyed on the
        in-place version of every parameter and buffer involved (optimizer steps and
        ``load_state_dict`` invalidate it) and cleared by ``train()``.
        """
        use_cache = not self.training and not torch.is_grad_enabled()
        if use_cache and self._cache is not None and self._cache[0] == self._cache_key():
            return self._cache[1]
        text = self.encode_prompts()  # (P, D)
        prompts = torch.cat([self.background.to(text.dtype), text], dim=0)  # (Q, D)
        if use_cache:
            self._cache = (self._cache_key(), prompts)
        return prompts

    def train(self, mode: bool = True) -> "PartPromptLearner":
        """Set the mode and drop the cached prompt features."""
        self._cache = None
        return super().train(mode)
