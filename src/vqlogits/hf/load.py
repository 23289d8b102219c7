"""Loading Hugging Face causal LMs (an HF folder, a GGUF file, the embedded SmolLM2) and swapping
their output layer for a vqlogits head."""

from __future__ import annotations

from . import _quiet  # noqa: F401  (first: torchao's import lines silenced before transformers imports it)

# isort: split

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..data.embedded import smollm2_gguf
from ..files import USER_CACHE

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def check_supported(model) -> None:
    arch = model.config.model_type
    if arch not in SUPPORTED:
        raise ValueError(f"architecture {arch!r} ({type(model).__name__}) is not supported; supported: {SUPPORTED}")


def vqlogits_head(model, *needs: str):
    """``model``'s output layer, checked to be a vqlogits head with the methods ``needs``."""
    head = model.get_output_embeddings()
    if not all(hasattr(head, name) for name in needs):
        raise ValueError(
            f"model's output layer is {type(head).__name__}, not a vqlogits head; install one first (e.g."
            " vqlogits.hf.compress)"
        )
    return head


def use_head(model, head) -> None:
    """Install ``head`` as the output layer, untied from the input embedding (which stays as it was)."""
    model.config.tie_word_embeddings = False
    model._tied_weights_keys = {}  # transformers would re-tie lm_head.weight to the embedding
    model.set_output_embeddings(head)


def _smollm2_folder(cache: str | Path) -> Path:
    """SmolLM2-135M-Instruct as a plain HF folder, converted once from the GGUF (about 10 s)."""
    folder = Path(cache) / "smollm2"
    hf = folder / "hf"
    if not (hf / "model.safetensors").exists():
        gguf = smollm2_gguf(cache)  # fetched on first use
        _from_gguf(gguf).save_pretrained(hf)
        AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf.name).save_pretrained(hf)
    return hf


def _from_gguf(path: Path):
    """Dequantised fp32 model from a GGUF file, rebuilt so that it can be saved again."""
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    return model.eval()


def load_causal_lm(spec: str, cache: str | Path = USER_CACHE):
    """(model, folder) for ``smollm2``, an HF model folder, or a ``.gguf`` file. Float32, eval mode."""
    if spec == "smollm2":
        spec = str(_smollm2_folder(cache))
    path = Path(spec)
    if path.suffix == ".gguf" and path.is_file():
        model = _from_gguf(path)
    elif (path / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    else:
        raise ValueError(f"model {spec!r}: expected 'smollm2', an HF model folder with config.json, or a .gguf file")
    check_supported(model)
    return model, path if path.is_dir() else path.parent


@torch.no_grad()
def lossless_dtype(model) -> torch.dtype:
    """The smallest floating dtype that holds every weight of ``model`` exactly: what compress and
    accelerate write by default, so the folder's model is the source model (an HF folder stored in
    bf16 gives bf16; a GGUF's dequantized blocks usually need float32)."""
    for dtype in (torch.bfloat16, torch.float16):
        if all(torch.equal(p.to(dtype).to(p.dtype), p) for p in model.parameters() if p.is_floating_point()):
            return dtype
    return torch.float32


def copy_tokenizer(source: Path, out: Path) -> None:
    """The tokenizer files of ``source`` into ``out``."""
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            (out / name).write_bytes((source / name).read_bytes())
