"""Loading Hugging Face causal LMs (an HF folder, a GGUF file, the embedded SmolLM2 and Gemma-3)
and swapping their output layer for a vqlogits head.

The architectures vqlogits supports are listed once, in ``SUPPORTED`` (transformers' model types)
and ``GGUF_ARCHITECTURES`` (a GGUF's ``general.architecture``, read before its minutes of
dequantizing). A GGUF is converted once into an HF folder with its tokenizer, kept in the user
cache under a digest of the file, so every command reads the same folder.
"""

from __future__ import annotations

from . import _quiet  # noqa: F401  (first: torchao's import lines silenced before transformers imports it)

# isort: split

import hashlib
import json
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..data.embedded import MODEL_HELP, MODELS
from ..files import USER_CACHE, cache_lock

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "gemma3_text")
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gpt2": "gpt2", "gemma3": "gemma3_text"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def check_supported(model) -> None:
    """The model's architecture is one vqlogits handles, and its logits are a plain ``h @ W.T``."""
    arch = model.config.model_type
    if arch not in SUPPORTED:
        raise ValueError(f"architecture {arch!r} ({type(model).__name__}) is not supported; supported: {SUPPORTED}")
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2: tanh(logits / c) * c, which no vqlogits head computes
        raise ValueError(
            f"final_logit_softcapping={cap} ({arch}): its logits are tanh-capped, which vqlogits heads do not apply"
        )


def gguf_architecture(path: Path) -> str:
    """The transformers model type of a GGUF file, from its metadata alone; refuses an unsupported one."""
    import gguf

    try:
        field = gguf.GGUFReader(path).fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except (ValueError, KeyError, OSError) as e:
        raise ValueError(f"{path} is not a readable GGUF file ({type(e).__name__}: {str(e)[:200]})") from None
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported; supported: {tuple(GGUF_ARCHITECTURES)}")
    return GGUF_ARCHITECTURES[arch]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()[:16]


def gguf_folder(path: Path, cache: str | Path = USER_CACHE) -> Path:
    """The GGUF at ``path`` as an HF folder (fp32 weights, config, tokenizer) in ``<cache>/gguf``,
    converted once (SmolLM2 10 s, Gemma-3-270M 30 s) and found again by the file's digest."""
    gguf_architecture(path)
    folder = Path(cache) / "gguf" / f"{path.stem}-{_file_digest(path)}"
    with cache_lock(folder):  # a second process (a study's other core) waits, then finds it made
        if not (folder / "config.json").exists():
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)  # a killed conversion's
            _from_gguf(path).save_pretrained(tmp)
            AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(tmp)
            tmp.replace(folder)  # config.json appears with the complete folder
    return folder


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
    """(model, folder) for an embedded model (``MODELS``), an HF model folder, or a
    ``.gguf`` file (converted once, ``gguf_folder``). Float32, eval mode. The folder holds the
    model's tokenizer."""
    path = Path(spec)
    if spec in MODELS:
        path = gguf_folder(MODELS[spec](cache), cache)
    elif path.suffix == ".gguf" and path.is_file():
        path = gguf_folder(path, cache)
    if not (path / "config.json").exists():
        raise ValueError(f"model {spec!r}: expected {MODEL_HELP}")
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path / 'config.json'} is not a readable JSON file ({e})") from None
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    check_supported(model)
    return model, path


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
