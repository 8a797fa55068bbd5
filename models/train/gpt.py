"""A small decoder-only transformer with rotary positions and a key/value cache.

Pre-LayerNorm blocks, rotary position embeddings (RoPE) computed from ``position_ids``,
causal scaled-dot-product attention and an output head tied to the token embedding.
``forward`` takes and returns the per-layer keys and values, so decoding one token at a
time with the cache gives the same logits as running the whole sequence.

RoPE makes attention depend only on the distance between positions: the engine can drop
the oldest cache entries and keep counting positions past the trained context length, and
left-padded rows give the same logits as the unpadded sequence alone.

The forward avoids Python control flow on tensor values so ``torch.onnx.export`` can trace
it with dynamic batch, sequence and past lengths.

Shapes: B batch, S new tokens, P cached tokens, T = P + S, H heads, D head size,
C = n_embd, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - the conventional alias

logger = logging.getLogger(__name__)

# One layer's cache: (key, value), each [B, H, T, D]; keys are stored already rotated.
KeyValue = tuple[Tensor, Tensor]


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Model arguments; stored in every checkpoint so loading rebuilds the same model."""

    vocab_size: int = 512        # token ids (the tokenizer's vocab_size)
    context_length: int = 1024   # tokens per training window; decoding may slide past it
    n_layer: int = 4             # transformer blocks
    n_head: int = 4              # attention heads per block
    n_embd: int = 256            # residual width C (head size D = C / H)
    dropout: float = 0.0         # on residual branches and embeddings (see attention)
    rope_base: float = 10000.0   # RoPE frequency base

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"head size ({self.n_embd // self.n_head}) must be even for RoPE")

    @property
    def head_dim(self) -> int:
        """Size D of one attention head."""
        return self.n_embd // self.n_head


# Named sizes. "small" is the shipped default: it must decode fast on a 2-core CPU.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "context_length": 256},
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 256, "context_length": 1024},
    # ~3x the compute of small per token: still real-time on the 2-core CPU for one
    # session, trained on a GPU.
    "base": {"n_layer": 6, "n_head": 6, "n_embd": 384, "context_length": 1024},
    "medium": {"n_layer": 8, "n_head": 8, "n_embd": 512, "context_length": 2048},
}


def gpt_config(size: str, vocab_size: int, **overrides: Any) -> GPTConfig:
    """The config of a named size for a vocabulary, with optional field overrides.

    Raises:
        ValueError: an unknown size name.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r} (choose from {', '.join(SIZES)})")
    return GPTConfig(vocab_size=vocab_size, **{**SIZES[size], **overrides})


def rope_cos_sin(position_ids: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """Rotation angles of each position: cos and sin, each [B, 1, S, D/2]."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=position_ids.device,
                                      dtype=torch.float32) / head_dim)  # (D/2,)
    angles = position_ids.to(torch.float32).unsqueeze(-1) * inv_freq  # (B, S, D/2)
    return angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[i], x[i + D/2]) of x [B, H, S, D] by the position angles."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention that appends to and returns a key/value cache."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, past: KeyValue | None,
                mask: Tensor | None) -> tuple[Tensor, KeyValue]:
        """x [B, S, C] -> ([B, S, C], (key, value) [B, H, T, D]); mask [B, 1, S, T] or None."""
        B, S, C = x.shape  # noqa: N806 - shape letters
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, S, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, S, D)
        k = k.view(B, S, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, S, D)
        v = v.view(B, S, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, S, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)  # (B, H, T, D)
            v = torch.cat((past[1], v), dim=2)  # (B, H, T, D)
        # No dropout on the attention weights: it forces the unfused kernel, which halved
        # training speed on the CPU; the residual and embedding dropout regularize enough.
        if mask is None:
            # No cache and no padding: the fused causal kernel.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, S, C)  # (B, S, C)
        return self.resid_drop(self.proj(y)), (k, v)


class MLP(nn.Module):
    """Position-wise feed-forward network, 4x wide, GELU."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """[B, S, C] -> [B, S, C]."""
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, past: KeyValue | None,
                mask: Tensor | None) -> tuple[Tensor, KeyValue]:
        """[B, S, C] -> ([B, S, C], this layer's cache)."""
        a, present = self.attn(self.ln_1(x), cos, sin, past, mask)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


def attention_mask_4d(attention_mask: Tensor | None, batch: int, seq: int, past_len: int,
                      device: torch.device) -> Tensor:
    """Boolean mask [B, 1, S, T] (True = may attend) from causality and left padding.

    Query i sits at cache index ``past_len + i``. Every query may always see its own key:
    a padding query would otherwise have no key left and its softmax would give NaN;
    real queries never see padding keys, so their outputs do not change.
    """
    total = past_len + seq
    key_idx = torch.arange(total, device=device).unsqueeze(0)              # (1, T)
    query_idx = torch.arange(seq, device=device).unsqueeze(1) + past_len   # (S, 1)
    allowed = key_idx <= query_idx                                          # (S, T)
    allowed = allowed.unsqueeze(0).expand(batch, seq, total)                # (B, S, T)
    if attention_mask is not None:
        allowed = allowed & attention_mask.to(torch.bool).unsqueeze(1)      # (B, S, T)
    allowed = allowed | (key_idx == query_idx).unsqueeze(0)                 # own key
    return allowed.unsqueeze(1)                                             # (B, 1, S, T)


class GPT(nn.Module):
    """Decoder-only transformer language model over token ids."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one matrix in and out
        self.apply(self._init_weights)
        # GPT-2's scaling keeps the residual stream's variance flat with depth.
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        """Number of distinct parameters (the tied head is counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: Tensor, past: list[KeyValue] | None = None,
                position_ids: Tensor | None = None,
                attention_mask: Tensor | None = None) -> tuple[Tensor, list[KeyValue]]:
        """Logits of the next token at every position, and the extended cache.

        Args:
            input_ids: [B, S] token ids.
            past: per-layer (key, value), each [B, H, P, D], or None for an empty cache.
            position_ids: [B, S] positions; default ``P + arange(S)``.
            attention_mask: [B, P + S], 1 for real tokens and 0 for left padding.

        Returns:
            logits [B, S, V] and the cache: per layer (key, value), each [B, H, P + S, D].
        """
        B, S = input_ids.shape  # noqa: N806 - shape letters
        past_len = past[0][0].shape[2] if past is not None else 0
        if position_ids is None:
            position_ids = (torch.arange(S, device=input_ids.device) + past_len).unsqueeze(0)
            position_ids = position_ids.expand(B, S)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_base)
        mask = None
        if past is not None or attention_mask is not None:
            mask = attention_mask_4d(attention_mask, B, S, past_len, input_ids.device)
        x = self.drop(self.wte(input_ids))  # (B, S, C)
        present: list[KeyValue] = []
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(x, cos, sin, past[i] if past is not None else None, mask)
            present.append(layer_cache)
        logits = self.lm_head(self.ln_f(x))  # (B, S, V)
        return logits, present
