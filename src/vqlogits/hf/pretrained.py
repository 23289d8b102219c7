"""Replace ``lm_head`` of a Hugging Face causal LM by a ``VQLogitsHead``; save, load, generate, evaluate.

A compressed folder holds ``config.json`` (with ``tie_word_embeddings = false``),
``model.safetensors`` (backbone + ``lm_head.codebook`` / ``assignment`` / ``bias``),
``vqlogits.json`` (K, V, d, source), ``dense_head.safetensors`` (the original output matrix, the
teacher for calibration and evaluation) and the tokenizer.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..cluster import kmeans
from ..heads import VQLogitsHead

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
FORMAT = 1


def check_supported(model) -> None:
    arch = model.config.model_type
    if arch not in SUPPORTED:
        raise ValueError(f"architecture {arch!r} ({type(model).__name__}) is not supported; supported: {SUPPORTED}")


def _smollm2_folder(cache: str | Path) -> Path:
    """SmolLM2-135M-Instruct as a plain HF folder, converted once from the GGUF (about 10 s)."""
    folder = Path(cache) / "smollm2"
    hf = folder / "hf"
    if not (hf / "model.safetensors").exists():
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise ValueError(f"no SmolLM2 GGUF in {folder}; run `make data` first")
        _from_gguf(ggufs[0]).save_pretrained(hf)
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(folder), gguf_file=ggufs[0].name).save_pretrained(hf)
    return hf


def _from_gguf(path: Path):
    """Dequantised fp32 model from a GGUF file, rebuilt so that it can be saved again."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    return model.eval()


def load_causal_lm(spec: str, cache: str | Path = ".cache"):
    """(model, folder) for ``smollm2``, an HF model folder, or a ``.gguf`` file. Float32, eval mode."""
    from transformers import AutoModelForCausalLM

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


def _use_vq_head(model, head: VQLogitsHead) -> None:
    """Install ``head`` as the output layer, untied from the input embedding (which stays as it was)."""
    model.config.tie_word_embeddings = False
    model._tied_weights_keys = {}  # transformers would re-tie lm_head.weight to the embedding
    model.set_output_embeddings(head)


def exact_plus_kmeans(dense: torch.Tensor, codebook_size: int, frequent: torch.Tensor, seed: int = 0, bias: bool = True) -> VQLogitsHead:
    """VQ head whose first len(frequent) codes are the exact rows of those tokens (singleton codes)
    and whose other codes are k-means centroids of the remaining rows: the ``hybrid`` head's map."""
    V, n = dense.shape[0], frequent.numel()
    if not 0 < n < codebook_size:
        raise ValueError(f"exact_tokens must be in (0, codebook_size={codebook_size}), got {n}")
    rest = torch.ones(V, dtype=torch.bool)
    rest[frequent] = False
    tail = kmeans(dense[rest], codebook_size - n, seed=seed, progress=True)
    assignment = torch.empty(V, dtype=torch.long)
    assignment[frequent] = torch.arange(n)
    assignment[rest] = n + tail.assignment
    head = VQLogitsHead(dense.shape[1], V, codebook_size, bias=bias, dtype=dense.dtype)
    with torch.no_grad():
        head.codebook.copy_(torch.cat([dense[frequent], tail.centroids.to(dense.dtype)]))
    head.set_assignment(assignment)
    return head


def compress(
    spec: str,
    codebook_size: int,
    out: str | Path,
    init: str = "kmeans",
    seed: int = 0,
    cache: str | Path = ".cache",
    bias: bool = True,
    exact_tokens: int = 0,
    corpus: str = "pydocs",
) -> Path:
    """Load a causal LM, replace its head by a VQ head built from the head's weight, save to ``out``.

    ``exact_tokens`` > 0 spends that many of the K codes on the most frequent tokens of
    ``corpus`` (singleton codes holding their exact rows) and k-means the rest.
    """
    model, source = load_causal_lm(spec, cache)
    dense = model.get_output_embeddings().weight.detach().clone()  # (V, d); a copy, as it may be tied
    if exact_tokens:
        from ..lm.data import token_counts, tokenize_corpus

        if not (source / "tokenizer.json").exists():
            raise ValueError(f"exact_tokens needs the model's tokenizer.json in {source}")
        splits, _, _ = tokenize_corpus(corpus, str(source / "tokenizer.json"), cache)
        counts = token_counts(splits["train"], dense.shape[0])
        frequent = torch.sort(counts, descending=True, stable=True).indices[:exact_tokens]
        head = exact_plus_kmeans(dense, codebook_size, frequent, seed, bias)
    else:
        head = VQLogitsHead.from_weight(dense, codebook_size, init=init, seed=seed, bias=bias, progress=True)
    _use_vq_head(model, head)
    out = Path(out)
    save_pretrained(model, out, dense_head=dense, source=spec)
    tokenizer = source / "tokenizer.json"
    if tokenizer.exists():
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (source / name).exists():
                (out / name).write_bytes((source / name).read_bytes())
    return out


def save_pretrained(model, out: str | Path, dense_head: torch.Tensor | None = None, source: str | None = None) -> None:
    from safetensors.torch import save_file

    head = model.get_output_embeddings()
    if not isinstance(head, VQLogitsHead):
        raise ValueError(f"model's output layer is {type(head).__name__}, not a VQLogitsHead")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    old = json.loads((out / "vqlogits.json").read_text()) if (out / "vqlogits.json").exists() else {}
    # Keep what earlier steps recorded (source, calibration history), update the head's shape.
    meta = {**old, "format": FORMAT, "codebook_size": head.codebook_size, "vocab_size": head.vocab_size, "d_model": head.d_model, "bias": head.bias is not None, "architecture": model.config.model_type}
    meta["source"] = source or old.get("source")
    (out / "vqlogits.json").write_text(json.dumps(meta, indent=1))
    if dense_head is not None:
        save_file({"weight": dense_head.contiguous()}, out / "dense_head.safetensors")


def load_pretrained(folder: str | Path, model=None):
    """The compressed model saved in ``folder``; its logits equal the saved model's exactly.

    ``model``: load into this existing causal LM instead of building one from the saved config;
    a different vocabulary or hidden size is refused with a ValueError.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    if not (folder / "vqlogits.json").exists():
        raise ValueError(f"{folder} is not a vqlogits folder (no vqlogits.json)")
    meta = json.loads((folder / "vqlogits.json").read_text())
    if model is None:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    check_supported(model)
    V, d = model.config.vocab_size, model.get_input_embeddings().weight.shape[1]
    if (V, d) != (meta["vocab_size"], meta["d_model"]):
        raise ValueError(f"saved head has vocab_size={meta['vocab_size']}, d_model={meta['d_model']}; the model has vocab_size={V}, d_model={d}")
    _use_vq_head(model, VQLogitsHead(d, V, meta["codebook_size"], bias=meta["bias"]))
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    return model.eval()


def dense_head_weight(folder: str | Path) -> torch.Tensor:
    from safetensors.torch import load_file

    path = Path(folder) / "dense_head.safetensors"
    if not path.exists():
        raise ValueError(f"{path} is missing: the original head is needed as the teacher")
    return load_file(path)["weight"]


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int = 32, temperature: float = 1.0, top_k=None, top_p=None, do_sample: bool = False, generator=None, eos_token_id: int | None = None) -> torch.Tensor:
    """Decode with the backbone's KV cache and the head's compact greedy / sample: no (B, V) logits.

    Same distribution per step as ``model.generate(..., do_sample, temperature, top_k, top_p)``;
    greedy decoding gives the same tokens. (B, T) -> (B, T + new).
    """
    from transformers import DynamicCache

    head = model.get_output_embeddings()
    if not isinstance(head, VQLogitsHead):
        raise ValueError(f"model's output layer is {type(head).__name__}, not a VQLogitsHead")
    backbone = model.base_model
    cache = DynamicCache()
    ids = input_ids
    step_input = input_ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        hidden = backbone(input_ids=step_input, past_key_values=cache, use_cache=True).last_hidden_state[:, -1]  # (B, d)
        nxt = head.sample(hidden, temperature, top_k, top_p, generator) if do_sample else head.greedy(hidden)
        if eos_token_id is not None:
            nxt = torch.where(done, eos_token_id, nxt)
            done |= nxt == eos_token_id
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        step_input = nxt[:, None]
        if eos_token_id is not None and bool(done.all()):
            break
    return ids


def generate_text(folder: str | Path, prompt: str, max_new_tokens: int = 48, temperature: float = 1.0, top_k=None, top_p=None, do_sample: bool = False, seed: int = 0) -> str:
    """Prompt in, continuation out, through ``generate`` (the compact path)."""
    from tokenizers import Tokenizer

    folder = Path(folder)
    model = load_pretrained(folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = torch.tensor([tok.encode(prompt).ids])
    eos = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else None
    g = torch.Generator().manual_seed(seed)
    out = generate(model, ids, max_new_tokens, temperature, top_k, top_p, do_sample, g, eos)
    return tok.decode(out[0].tolist())


# ---- evaluation ----------------------------------------------------------------------------------


@torch.no_grad()
def compare_heads(backbone, vq: VQLogitsHead, dense_weight: torch.Tensor, data, block: int = 256, max_tokens: int = 16384, original_backbone=None) -> dict:
    """Perplexity of both heads, KL(original || compressed) and top-1 agreement on held-out tokens.

    The original model is ``original_backbone`` (default: the same backbone) with the dense head.
    """
    original_backbone = original_backbone or backbone
    nll_o = nll_c = kl = agree = 0.0
    count = 0
    from ..lm.data import eval_windows

    for w in tqdm(eval_windows(data, block, max_tokens, batch=1), desc="compare", leave=False):
        x, y = w[:, :-1], w[0, 1:]
        h = backbone(input_ids=x).last_hidden_state[0]  # (T, d)
        h_o = h if original_backbone is backbone else original_backbone(input_ids=x).last_hidden_state[0]
        logp_o = torch.log_softmax(h_o @ dense_weight.T, dim=-1)  # (T, V)
        logp_c = torch.log_softmax(vq(h), dim=-1)
        nll_o -= float(logp_o.gather(1, y[:, None]).sum())
        nll_c -= float(logp_c.gather(1, y[:, None]).sum())
        kl += float((logp_o.exp() * (logp_o - logp_c)).sum())
        agree += float((logp_o.argmax(-1) == logp_c.argmax(-1)).sum())
        count += y.numel()
    return {"ppl_original": math.exp(nll_o / count), "ppl_compressed": math.exp(nll_c / count), "kl_original_to_compressed": kl / count, "top1_agreement": agree / count, "eval_tokens": count}


@torch.no_grad()
def decode_speed(model, dense_weight: torch.Tensor, batch: int = 1, steps: int = 16) -> dict:
    """Greedy tokens/s with the compact VQ head vs the original dense head, same backbone and cache."""
    from transformers import DynamicCache

    vq = model.get_output_embeddings()
    out = {}
    for name, pick in (("dense", lambda h: (h @ dense_weight.T).argmax(-1)), ("vq", vq.greedy)):
        best = 0.0
        for _ in range(2):  # the first pass is a warm-up
            cache, tok = DynamicCache(), torch.zeros(batch, 8, dtype=torch.long)
            h = model.base_model(input_ids=tok, past_key_values=cache, use_cache=True).last_hidden_state[:, -1]
            t0 = time.perf_counter()
            for _ in range(steps):
                nxt = pick(h)
                h = model.base_model(input_ids=nxt[:, None], past_key_values=cache, use_cache=True).last_hidden_state[:, -1]
            best = max(best, batch * steps / (time.perf_counter() - t0))
        out[f"{name}_tok_s"] = best
    return out


def evaluate_pretrained(folder: str | Path, corpus: str = "pydocs", max_tokens: int = 16384, cache: str | Path = ".cache", split: str = "test") -> dict:
    """Original vs compressed: perplexity, KL, top-1 agreement, head size, decode speed."""
    from ..lm.data import tokenize_corpus

    folder = Path(folder)
    model = load_pretrained(folder)
    meta = json.loads((folder / "vqlogits.json").read_text())
    dense = dense_head_weight(folder)
    splits, _, _ = tokenize_corpus(corpus, str(folder / "tokenizer.json"), cache)
    original = None
    if meta.get("source") and (meta.get("calibrated_backbone")):
        original, _ = load_causal_lm(meta["source"], cache)
    vq = model.get_output_embeddings()
    result = {"folder": str(folder), "corpus": corpus, "split": split, "codebook_size": vq.codebook_size}
    result.update(compare_heads(model.base_model, vq, dense, splits[split], max_tokens=max_tokens, original_backbone=None if original is None else original.base_model))
    head_params = sum(p.numel() for p in vq.parameters())
    result.update(
        head_params=head_params,
        dense_head_params=dense.numel(),
        head_bytes=head_params * 4 + vq.assignment.numel() * vq.assignment.element_size(),
        dense_head_bytes=dense.numel() * 4,
    )
    result.update(decode_speed(model, dense))
    return result
