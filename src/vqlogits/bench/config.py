"""What ``vqlogits bench`` measures: shapes, sizes, repeats and device."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SHAPES = {"smollm2": (49152, 576), "llama3": (128256, 2048), "gemma": (262144, 2304)}


@dataclass
class BenchConfig:
    shapes: tuple = tuple(SHAPES)
    codebook_sizes: tuple = (256, 1024, 4096)
    tokens: tuple = (1, 64, 4096)
    loss_tokens: tuple = (4096, 8192)
    loss_codebook_sizes: tuple = (1024,)
    decode_batches: tuple = (1, 16)
    decode_steps: int = 16
    decode_layers: int = 30
    indexed_models: tuple = ("gemma-3-270m", "llama-3.2-1b")  # IndexedHead decode at published shapes (random weights)
    verified: bool = True  # verified decoding of a SmolLM2-shaped model with a synthetic head
    verified_agreement: float = 0.9993  # the synthetic head's draft agreement: SmolLM2's at K / 8 (docs/PRETRAINED.md)
    gemma_folder: str = ""  # an accelerated Gemma-3-270M folder: every decoding mode on the real model (CPU)
    gemma_batches: tuple = (1, 4, 16)
    cache: str = ""  # the data cache (default: the user cache) for the Gemma section's model and prompts
    repeats: int = 10
    warmup: int = 2
    max_tflop: float = 3.0  # skip a dense measurement above this many TFLOP per call (CPU time)
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    out: str = "runs/bench"
    extras: list = field(default_factory=list)  # notes on optional baselines


QUICK = dict(shapes=("smollm2",), loss_tokens=(8192,), decode_steps=8, repeats=2, warmup=1, indexed_models=())
