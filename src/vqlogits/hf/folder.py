"""The vqlogits model folder: save and load a causal LM whose output layer is a vqlogits head.

A folder holds ``config.json`` (with ``tie_word_embeddings = false``), ``model.safetensors``
(backbone + the head's tensors under ``lm_head.``), ``vqlogits.json`` (the head's kind and sizes,
``heads.head_config``, plus V, d, the source and the calibration history; written last, so its
presence means a complete folder), ``dense_head.safetensors`` (the original output matrix, the
teacher for calibration and evaluation) and the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ..files import write_atomic, write_json
from ..heads import head_config, head_from_config
from .load import check_supported, use_head, vqlogits_head
from .training import patch

FORMAT = 1


def save_pretrained(
    model, out: str | Path, dense_head: torch.Tensor | None = None, source: str | None = None, extra: dict | None = None
) -> None:
    """config.json, model.safetensors, dense_head.safetensors and, last, vqlogits.json (the head's
    kind and shape, ``extra``)."""
    head = vqlogits_head(model, "greedy", "vocab_size")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Each file is replaced atomically: calibration rewrites a finished folder, and a kill must not damage it.
    write_atomic(out / "config.json", model.config.to_json_file)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_atomic(out / "model.safetensors", lambda tmp: safetensors.torch.save_file(state, tmp))
    if dense_head is not None:
        write_atomic(
            out / "dense_head.safetensors",
            lambda tmp: safetensors.torch.save_file({"weight": dense_head.contiguous()}, tmp),
        )
    old = json.loads((out / "vqlogits.json").read_text()) if (out / "vqlogits.json").exists() else {}
    # Keep what earlier steps recorded (source, calibration history), update the head's shape.
    meta = {
        **old,
        **(extra or {}),
        "format": FORMAT,
        **head_config(head),
        "vocab_size": head.vocab_size,
        "d_model": head.d_model,
        "architecture": model.config.model_type,
    }
    meta["source"] = source or old.get("source")
    write_json(out / "vqlogits.json", meta)


def load_pretrained(folder: str | Path, model=None):
    """The compressed model saved in ``folder``; its logits equal the saved model's exactly, and its
    training loss goes through the head's own loss (``hf.training.patch``: no (N, V) logits).

    ``model``: load into this existing causal LM instead of building one from the saved config;
    a different vocabulary or hidden size is refused with a ValueError.
    """
    folder = Path(folder)
    if not (folder / "vqlogits.json").exists():
        raise ValueError(f"{folder} is not a vqlogits folder (no vqlogits.json)")
    meta = json.loads((folder / "vqlogits.json").read_text())
    if model is None:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    check_supported(model)
    V, d = model.config.vocab_size, model.get_input_embeddings().weight.shape[1]
    if (V, d) != (meta["vocab_size"], meta["d_model"]):
        raise ValueError(
            f"saved head has vocab_size={meta['vocab_size']}, d_model={meta['d_model']};"
            f" the model has vocab_size={V}, d_model={d}"
        )
    use_head(model, head_from_config(meta, d, V))
    model.load_state_dict(safetensors.torch.load_file(folder / "model.safetensors"), strict=True)
    return patch(model.eval())  # model(input_ids, labels=...).loss through the head's own loss


def dense_head_weight(folder: str | Path) -> torch.Tensor:
    path = Path(folder) / "dense_head.safetensors"
    if not path.exists():
        raise ValueError(f"{path} is missing: the original head is needed as the teacher")
    return safetensors.torch.load_file(path)["weight"]
