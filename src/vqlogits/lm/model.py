"""A small GPT decoder whose output head is any vqlogits head."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..heads import SIZES, build_head

HEAD_DIM = 32  # attention head size of a width set without --n-head (tiny's 128 / 4)
WIDTH_STEP = 32  # the grid of a width solved by size_body
PRESETS = {
    # name: (n_layer, n_head, d_model, block_size, batch_size)
    "tiny": (2, 4, 128, 64, 8),
    "small": (4, 4, 256, 128, 16),
    "base": (8, 8, 512, 256, 32),
}


@dataclass
class ModelConfig:
    vocab_size: int
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 128
    block_size: int = 64
    head: str = "dense"  # any name in vqlogits.heads.HEADS
    codebook_size: int = SIZES["codebook_size"]
    head_bias: bool = SIZES["bias"]
    rank: int = SIZES["rank"]
    token_dim: int = SIZES["token_dim"]  # twolevel, hybrid-twolevel
    num_codebooks: int = SIZES["num_codebooks"]  # rvq
    n_frequent: int = SIZES["n_frequent"]  # hybrid, hybrid-twolevel

    def build_head(self) -> nn.Module:
        sizes = {k: getattr(self, k) for k in ("codebook_size", "rank", "token_dim", "num_codebooks", "n_frequent")}
        return build_head(self.head, self.d_model, self.vocab_size, bias=self.head_bias, **sizes)

    @classmethod
    def preset(
        cls,
        name: str,
        vocab_size: int,
        block_size: int = 0,
        n_layer: int = 0,
        n_head: int = 0,
        d_model: int = 0,
        **head_kw,
    ) -> "ModelConfig":
        """The preset's shape; a size > 0 replaces the preset's. A width given without ``n_head``
        gets heads of ``HEAD_DIM`` dimensions."""
        if name not in PRESETS:
            raise ValueError(f"model must be one of {tuple(PRESETS)}, got {name!r}")
        preset_layer, preset_head, preset_d, preset_block, _ = PRESETS[name]
        d = d_model or preset_d
        heads = n_head or (preset_head if d == preset_d else max(1, d // HEAD_DIM))
        if d % heads:
            raise ValueError(f"d_model={d} must be divisible by n_head={heads}")
        return cls(vocab_size, n_layer or preset_layer, heads, d, block_size or preset_block, **head_kw)


def body_train_flops(n_layer: int, d_model: int, block_size: int) -> int:
    """Matmul FLOPs per token of the blocks in one training step; see ``GPT.train_flops``."""
    return 72 * n_layer * d_model * d_model + 12 * n_layer * block_size * d_model


def size_body(
    target: float, head_flops, block_size: int, n_layer: int = 0, d_model: int = 0, tolerance: float = 0.1
) -> tuple[int, int]:
    """The body (n_layer, d_model) whose training FLOPs per token, ``body_train_flops`` plus
    ``head_flops(d_model)`` (the head's, per token), come nearest ``target``.

    Give exactly one of ``n_layer`` (d_model is solved over multiples of ``WIDTH_STEP``) or
    ``d_model`` (n_layer is solved). A ``ValueError`` if the nearest shape is further than
    ``tolerance`` from ``target``: the grid cannot hit it."""
    if (n_layer > 0) == (d_model > 0):
        raise ValueError(
            f"size_body needs exactly one of n_layer and d_model, got n_layer={n_layer}, d_model={d_model}"
        )
    widths = range(WIDTH_STEP, 2049, WIDTH_STEP) if n_layer else [d_model]
    head = {d: head_flops(d) for d in widths}
    shapes = [(L, d) for L in ([n_layer] if n_layer else range(1, 129)) for d in widths]
    cost = {s: body_train_flops(*s, block_size) + head[s[1]] for s in shapes}
    best = min(shapes, key=lambda s: abs(cost[s] - target))
    if abs(cost[best] / target - 1) > tolerance:
        raise ValueError(
            f"no body with n_layer={n_layer or 'any'}, d_model={d_model or 'any'} is within {tolerance:.0%} of"
            f" {target:,.0f} training FLOPs per token (nearest: {best}, {cost[best]:,.0f})"
        )
    return best


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model)
        )

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """``cache``: this block's keys and values so far (``{}`` to start one), extended in place;
        after the first call, one new position at a time."""
        B, T, C = x.shape
        q, k, v = (
            self.qkv(self.ln1(x)).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        )  # (B, H, T, C/H) each
        past = cache is not None and "k" in cache
        if past:
            k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
        if cache is not None:
            cache["k"], cache["v"] = k, v
        att = F.scaled_dot_product_attention(q, k, v, is_causal=not past)  # a new position sees everything before it
        x = x + self.proj(att.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token + position embeddings, pre-LN blocks, final LayerNorm, then ``head``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, std=std)
        self.head = cfg.build_head()

    def hidden(self, idx: torch.Tensor, cache: list[dict] | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, d) final hidden states. ``cache``: one dict per block (see
        ``Block.forward``); positions continue from the tokens it holds."""
        start = cache[0]["k"].shape[2] if cache and "k" in cache[0] else 0
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i])
        return self.ln_f(x)

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, new: int, do_sample: bool = False, generator=None, **sampling
    ) -> torch.Tensor:
        """Decoding with a KV cache through ``head.greedy``, or ``head.sample(h, **sampling)``
        (temperature, top_k, top_p): (B, T) -> (B, T + new), at most ``block_size`` positions in all;
        the same tokens as recomputing every prefix."""
        if idx.shape[1] + new > self.cfg.block_size:
            raise ValueError(f"prompt of {idx.shape[1]} + new={new} tokens exceeds block_size={self.cfg.block_size}")
        cache = [{} for _ in self.blocks]
        out, h = [idx], self.hidden(idx, cache)[:, -1]
        for i in range(new):
            out.append(
                (self.head.sample(h, generator=generator, **sampling) if do_sample else self.head.greedy(h))[:, None]
            )
            if i + 1 < new:
                h = self.hidden(out[-1], cache)[:, -1]
        return torch.cat(out, 1)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, return_hidden: bool = False):
        """Mean next-token loss if ``targets`` is given, else the logits of the last position (B, V).
        ``return_hidden``: (loss, hidden states (B, T, d)), so a DDP-wrapped model can hand the
        hidden states to the learned map."""
        h = self.hidden(idx)  # (B, T, d)
        if targets is None:
            return self.head(h[:, -1])
        loss = self.head.loss(h, targets)
        return (loss, h) if return_hidden else loss

    def train_flops(self, targets: torch.Tensor) -> int:
        """Matmul FLOPs of one training step (forward + backward) on a (B, T) batch with these targets.

        Per token, with L layers, width d and context T:
          body: 72 L d^2 (qkv, projection and MLP: 12 L d^2 weights, 2 FLOPs per weight forward, x 3
                with the two gradients; the embeddings' lookups cost none), plus attention
                12 L T d (scores and values, 4 T d forward, x 3; full T x T, the causal mask is not
                subtracted; a flash kernel's recomputed scores are not counted),
          head: ``head.loss_flops(targets)`` per head (forward + backward; a head whose loss
                recomputes its forward in backward counts the recompute).
        Equal to ``torch.utils.flop_counter.FlopCounterMode``'s count of the step with the math
        attention backend (tested).
        """
        return targets.numel() * body_train_flops(
            self.cfg.n_layer, self.cfg.d_model, targets.shape[-1]
        ) + self.head.loss_flops(targets)

    def decode_flops(self) -> int:
        """Matmul FLOPs of one decoded token with a KV cache, averaged over the positions of a full
        context: 24 L d^2 (the blocks' weights, 2 FLOPs each) + 2 L T d (scores and values against
        T / 2 cached positions on average, 4 FLOPs per position and dimension) + the head's
        ``decode_cost()``."""
        L, d, T = self.cfg.n_layer, self.cfg.d_model, self.cfg.block_size
        return 24 * L * d * d + 2 * L * T * d + self.head.decode_cost()["flops"]

    def embedding_params(self) -> int:
        return self.tok_emb.weight.numel() + self.pos_emb.weight.numel()

    def head_params(self) -> int:
        return sum(p.numel() for p in self.head.parameters())

    def backbone_params(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("head."))
