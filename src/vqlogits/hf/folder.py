"""The vqlogits model folder: save and load a causal LM whose output layer is a vqlogits head.

A folder holds ``config.json`` (a ``VQLogitsConfig``: model type ``vqlogits``, the base model's
config inside it), ``model.safetensors`` (backbone + the head's tensors under ``lm_head.``, in the
folder's dtype), ``vqlogits.json`` (the head's kind and sizes, ``heads.head_config``, plus V, d,
the dtype, the source and the calibration history; written last, so its presence means a complete
folder), the original output matrix (the teacher for calibration and evaluation: in
``dense_head.safetensors``, or, when it was tied to the input embedding, that embedding's key in
``model.safetensors``) and the tokenizer.

Hugging Face: importing ``vqlogits.hf`` registers the ``vqlogits`` model type, so
``AutoModelForCausalLM.from_pretrained(folder)`` returns ``load_pretrained(folder)``: the same
model, never a randomly initialised head. Without that import, transformers refuses the folder
(it does not know the type). A loaded model's own ``save_pretrained(out)`` writes a vqlogits
folder that reloads with identical logits.
"""

from __future__ import annotations

from . import _quiet  # noqa: F401  (first: torchao's import lines silenced before transformers imports it)

# isort: split

import functools
import json
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from .. import quant
from ..files import write_atomic, write_json
from ..heads import KINDS, head_config, head_from_config
from ..screens import int4 as screen_int4
from .load import check_supported, copy_tokenizer, use_head, vqlogits_head
from .model_generate import model_generate
from .training import patch

FORMAT = 2  # 1: config.json was the base model's own (transformers then built a random head)
DENSE_FILE = "dense_head.safetensors"
_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class VQLogitsConfig(PretrainedConfig):
    """config.json of a vqlogits folder: the base model's config under ``base_config``."""

    model_type = "vqlogits"

    def __init__(self, base_config: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.base_config = base_config or {}


class VQLogitsForCausalLM(PreTrainedModel):
    """What transformers' Auto classes build for a vqlogits folder: ``load_pretrained(folder)``."""

    config_class = VQLogitsConfig

    def __init__(self, config, *args, **kwargs):
        raise ValueError("a vqlogits model is loaded from its folder: vqlogits.load_pretrained(folder)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        return load_pretrained(pretrained_model_name_or_path)


AutoConfig.register(VQLogitsConfig.model_type, VQLogitsConfig, exist_ok=True)
AutoModelForCausalLM.register(VQLogitsConfig, VQLogitsForCausalLM, exist_ok=True)


def check_not_gguf(path: str | Path) -> None:
    """A ``.gguf`` file where a model folder is expected gets a message that says what to do."""
    path = Path(path)
    if path.suffix == ".gguf" and path.is_file():
        raise ValueError(
            f"{path} is a GGUF file, not a vqlogits model folder: make one with `vqlogits accelerate --model {path}"
            f" --out DIR` or `vqlogits compress --model {path} --out DIR`, or score the original alone with"
            f" `vqlogits eval --model {path}`"
        )


def read_meta(folder: str | Path) -> dict:
    """vqlogits.json of ``folder``, with an error that names the file and what is wrong with it."""
    check_not_gguf(folder)
    path = Path(folder) / "vqlogits.json"
    if not path.exists():
        raise ValueError(
            f"{Path(folder)} is not a vqlogits folder (no vqlogits.json); make one with vqlogits compress or accelerate"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{path} is not a readable JSON file ({type(e).__name__}); rewrite the folder with vqlogits compress"
        ) from None
    if not isinstance(meta, dict) or not {"vocab_size", "d_model"} <= set(meta):
        raise ValueError(
            f"{path} does not describe a vqlogits head (it needs an object with head, vocab_size and d_model)"
        )
    if meta.get("head", "vq") not in KINDS:
        raise ValueError(f"{path}: head must be one of {tuple(KINDS)}, got {meta.get('head')!r}")
    return meta


def save_pretrained(
    model,
    out: str | Path,
    dense_head: torch.Tensor | None = None,
    source: str | None = None,
    extra: dict | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """config.json, model.safetensors, the dense head and, last, vqlogits.json (the head's kind and
    shape, ``extra``). ``dense_head``: the original output matrix, or, when it is the input
    embedding, that embedding's key in the state dict (the teacher is not written twice).
    ``dtype``: of the fp32 tensors written (default: the folder's earlier dtype, else float32; what
    a head keeps in fp16 stays fp16); loading always gives float32. ``quantized_parts`` in
    vqlogits.json (``{name: [bits, group_size]}``) stores those head matrices packed (``quant``),
    re-quantized at every save."""
    head = vqlogits_head(model, "greedy", "vocab_size")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old = read_meta(out) if (out / "vqlogits.json").exists() else {}
    dtype = dtype or getattr(torch, old.get("dtype", "float32"))
    # Keep what earlier steps recorded (source, calibration history), update the head's shape.
    meta = {
        **old,
        **(extra or {}),
        "format": FORMAT,
        **head_config(head),
        "vocab_size": head.vocab_size,
        "d_model": head.d_model,
        "architecture": model.config.model_type,
        "dtype": str(dtype).removeprefix("torch."),
    }
    if dense_head is not None:
        meta["dense_head"] = dense_head if isinstance(dense_head, str) else DENSE_FILE
    meta["source"] = source or old.get("source")

    def stored(t: torch.Tensor) -> torch.Tensor:
        return (t.to(dtype) if t.dtype == torch.float32 else t).detach().contiguous()

    # Each file is replaced atomically: calibration rewrites a finished folder, and a kill must not damage it.
    config = VQLogitsConfig(base_config=model.config.to_dict(), architectures=["VQLogitsForCausalLM"])
    write_atomic(out / "config.json", config.to_json_file)
    state = {k: stored(v) for k, v in model.state_dict().items()}
    for name, (bits, group_size) in (meta.get("quantized_parts") or {}).items():
        key = f"lm_head.{name}"
        q, scale, offset = quant.quantize(state.pop(key).float(), bits, group_size)
        state[f"{key}.packed"], state[f"{key}.scale"], state[f"{key}.offset"] = quant.pack(q, bits), scale, offset
    meta["q8_tensors"] = _store_q8(state)
    write_atomic(out / "model.safetensors", lambda tmp: safetensors.torch.save_file(state, tmp))
    if isinstance(dense_head, torch.Tensor):
        dense = {"weight": stored(dense_head)}
        write_atomic(out / DENSE_FILE, lambda tmp: safetensors.torch.save_file(dense, tmp))
    write_json(out / "vqlogits.json", meta)


def _store_q8(state: dict) -> list[str]:
    """Replace every large fp32 tensor that is exactly 8-bit in groups of 32 (a Q8_0 matrix from a
    GGUF: the embedding, an index's rows) by its codes and scales (``quant.lossless_q8``); their keys."""
    keys = []
    for key in [k for k, t in state.items() if t.dtype == torch.float32 and t.numel() >= 4096]:
        if (q8 := quant.lossless_q8(state[key])) is not None:
            del state[key]
            state[f"{key}.q8"], state[f"{key}.q8_scale"] = q8
            keys.append(key)
    return keys


def _load_q8(get, key: str) -> torch.Tensor:
    """A tensor ``_store_q8`` stored, from ``get(name)``."""
    return quant.from_q8(get(f"{key}.q8"), get(f"{key}.q8_scale"))


def quantized_parts(head, bits: int, group_size: int = 32) -> dict:
    """``{name: [bits, group_size]}`` for a hybrid head's codebook and token vectors (a matrix whose
    rows ``group_size`` does not divide is quantized one group per row): ``extra`` for
    ``save_pretrained``."""
    parts = {}
    for name in ("codebook", "token_vectors"):
        if isinstance(getattr(head, name, None), torch.Tensor):
            width = getattr(head, name).shape[1]
            parts[name] = [bits, group_size if width % group_size == 0 else width]
    return parts


def _base_config(folder: Path):
    raw = json.loads((folder / "config.json").read_text())
    if raw.get("model_type") == VQLogitsConfig.model_type:
        base = dict(raw["base_config"])
        return AutoConfig.for_model(base.pop("model_type"), **base)
    return AutoConfig.from_pretrained(folder)  # format 1: the base model's own config.json


def load_pretrained(folder: str | Path, model=None):
    """The compressed model saved in ``folder``, in float32; its logits equal the saved model's
    exactly, and its training loss goes through the head's own loss (``hf.training.patch``: no
    (N, V) logits). Its ``save_pretrained(out)`` writes a vqlogits folder.

    ``model``: load into this existing causal LM instead of building one from the saved config;
    a different vocabulary or hidden size is refused with a ValueError.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    if model is None:
        model = AutoModelForCausalLM.from_config(_base_config(folder), dtype=torch.float32)
    check_supported(model)
    V, d = model.config.vocab_size, model.get_input_embeddings().weight.shape[1]
    if (V, d) != (meta["vocab_size"], meta["d_model"]):
        raise ValueError(
            f"saved head has vocab_size={meta['vocab_size']}, d_model={meta['d_model']};"
            f" the model has vocab_size={V}, d_model={d}"
        )
    use_head(model, head_from_config(meta, d, V))
    try:
        state = safetensors.torch.load_file(folder / "model.safetensors")
    except (safetensors.SafetensorError, OSError) as e:
        raise ValueError(
            f"{folder / 'model.safetensors'} cannot be read ({str(e)[:200]}); is the folder complete?"
        ) from None
    parts = {}
    for name, (bits, group_size) in (meta.get("quantized_parts") or {}).items():
        key, width = f"lm_head.{name}", getattr(model.get_output_embeddings(), name).shape[1]
        q = quant.unpack(state.pop(f"{key}.packed"), bits, width)
        parts[name] = (bits, q, state.pop(f"{key}.scale"), state.pop(f"{key}.offset"), group_size)
        state[key] = quant.dequantize(*parts[name][1:])
    for key in meta.get("q8_tensors", []):
        state[key] = _load_q8(state.pop, key)
    model.load_state_dict(state, strict=True)
    _decode_from_parts(model.get_output_embeddings(), parts)
    model.save_pretrained = lambda out, *a, **k: save_loaded(model, folder, out)  # HF's own would drop the head
    model.generate = functools.partial(model_generate, model)  # exact decoding, see hf/model_generate.py
    return patch(model.eval())  # model(input_ids, labels=...).loss through the head's own loss


def _decode_from_parts(head, parts: dict) -> None:
    """A VQ-family head whose codebook is stored as 4-bit groups the int4 kernel takes greedy-decodes
    from those codes (``VQLogitsHead.hold_int4_codebook``); other parts decode from fp32."""
    bits, q, scale, offset, group_size = parts.get("codebook", (0, None, None, None, 0))
    if bits == 4 and hasattr(head, "hold_int4_codebook") and screen_int4.available(4, group_size, head.d_model):
        head.hold_int4_codebook(q, scale, offset, group_size)


def save_loaded(model, origin: str | Path, out: str | Path) -> Path:
    """A loaded model written back as a vqlogits folder: its weights, and the origin folder's
    tokenizer, teacher and history (``model.save_pretrained(out)`` calls this)."""
    origin, out = Path(origin), Path(out)
    meta = read_meta(origin)
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != origin.resolve():
        copy_tokenizer(origin, out)
        if (origin / DENSE_FILE).exists():
            (out / DENSE_FILE).write_bytes((origin / DENSE_FILE).read_bytes())
    keep = {
        k: v for k, v in meta.items() if k in ("source", "calibration", "calibrated_backbone", "dense_head", "dtype")
    }
    save_pretrained(model, out, extra=keep, dtype=getattr(torch, meta.get("dtype", "float32")))
    return out


def dense_head_weight(folder: str | Path) -> torch.Tensor:
    """The original (V, d) output matrix, the teacher, in float32."""
    folder = Path(folder)
    meta = read_meta(folder)
    key = meta.get("dense_head", DENSE_FILE)
    if key != DENSE_FILE:
        with safetensors.safe_open(folder / "model.safetensors", "pt") as f:
            return _load_q8(f.get_tensor, key) if key in meta.get("q8_tensors", []) else f.get_tensor(key).float()
    path = folder / DENSE_FILE
    if not path.exists():
        raise ValueError(f"{path} is missing: the original head is needed as the teacher")
    return safetensors.torch.load_file(path)["weight"].float()


def keep_teacher(folder: str | Path, dense: torch.Tensor) -> None:
    """Write the teacher to dense_head.safetensors when it was the (tied) input embedding, before
    something trains that embedding."""
    folder = Path(folder)
    meta = read_meta(folder)
    if meta.get("dense_head", DENSE_FILE) != DENSE_FILE:
        teacher = {"weight": dense.to(getattr(torch, meta.get("dtype", "float32"))).contiguous()}
        write_atomic(folder / DENSE_FILE, lambda tmp: safetensors.torch.save_file(teacher, tmp))
        write_json(folder / "vqlogits.json", {**meta, "dense_head": DENSE_FILE})


def describe(folder: str | Path) -> dict:
    """What a folder holds: the head's kind and sizes, its parameters and bytes beside the dense
    head's, the dtype and the files' sizes on disk."""
    folder = Path(folder)
    meta = read_meta(folder)
    V, d = meta["vocab_size"], meta["d_model"]
    with safetensors.safe_open(folder / "model.safetensors", "pt") as f:
        head = {k.removeprefix("lm_head."): f.get_slice(k) for k in f.keys() if k.startswith("lm_head.")}
        shapes = {k: s.get_shape() for k, s in head.items()}
        sizes = {k: (int(torch.Size(shapes[k]).numel()), s.get_dtype()) for k, s in head.items()}
    # A quantized matrix (the quantized head's rows, a hybrid's quantized parts) counts its weights,
    # packed integers plus fp16 scales and offsets, not those numbers themselves.
    groups = {"": meta["group_size"]} if "bits" in meta and "group_size" in meta else {}  # a quantized head
    groups.update({f"{name}.": g for name, (_, g) in (meta.get("quantized_parts") or {}).items()})
    packed = {f"{p}{k}" for p in groups for k in ("packed", "scale", "offset")}
    q8 = [k.removeprefix("lm_head.") for k in meta.get("q8_tensors", []) if k.startswith("lm_head.")]
    packed |= {f"{k}.q8_scale" for k in q8}  # an 8-bit matrix counts its codes as its weights
    params = sum(n for k, (n, dt) in sizes.items() if dt.startswith(("F", "BF")) and k not in packed)
    params += sum(sizes[f"{p}scale"][0] * g for p, g in groups.items()) + sum(sizes[f"{k}.q8"][0] for k in q8)
    head_bytes = sum(n * _BYTES[dt] for n, dt in sizes.values())
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".json")}
    return {
        "folder": str(folder),
        **{k: meta[k] for k in ("head", "vocab_size", "d_model") if k in meta},
        **{k: meta[k] for k in ("codebook_size", "n_frequent", "token_dim", "clusters", "probes") if k in meta},
        "head_tensors": {k: list(v) for k, v in shapes.items()},
        "head_params": params,
        "head_bytes": head_bytes,
        "dense_head_params": V * d,
        "dense_head_bytes": 4 * V * d,  # the original head in fp32
        "head_param_share": params / (V * d),
        "head_byte_share": head_bytes / (4 * V * d),
        "dtype": meta.get("dtype", "float32"),
        "teacher": _teacher(folder, meta),
        "file_bytes": files,
    }


def _teacher(folder: Path, meta: dict) -> str | None:
    """Where the original head is kept, as the folder holds it: a file, the tied embedding's key in
    model.safetensors, or None (an index: the head is the original rows themselves)."""
    key = meta.get("dense_head")
    if key is None or key == DENSE_FILE:
        return DENSE_FILE if (folder / DENSE_FILE).exists() else None
    return f"model.safetensors: {key} (the tied input embedding)"
