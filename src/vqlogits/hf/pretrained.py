"""Replace ``lm_head`` of a Hugging Face causal LM by a ``VQLogitsHead``; save, load, generate, evaluate.

A compressed folder holds ``config.json`` (with ``tie_word_embeddings = false``),
``model.safetensors`` (backbone + ``lm_head.codebook`` / ``assignment`` / ``bias``),
``vqlogits.json`` (K, V, d, source), ``dense_head.safetensors`` (the original output matrix, the
teacher for calibration and evaluation) and the tokenizer.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..cluster import kmeans
from ..heads import VQLogitsHead
from ..lm.checkpoint import write_atomic, write_json

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
FORMAT = 1


def check_supported(model) -> None:
    arch = model.config.model_type
    if arch not in SUPPORTED:
        raise ValueError(f"architecture {arch!r} ({type(model).__name__}) is not supported; supported: {SUPPORTED}")


def vqlogits_head(model, *needs: str):
    """``model``'s output layer, checked to be a vqlogits head with the methods ``needs``."""
    head = model.get_output_embeddings()
    if not all(hasattr(head, name) for name in needs):
        raise ValueError(f"model's output layer is {type(head).__name__}, not a vqlogits head; install one first (e.g. vqlogits.hf.compress)")
    return head


def _smollm2_folder(cache: str | Path) -> Path:
    """SmolLM2-135M-Instruct as a plain HF folder, converted once from the GGUF (about 10 s)."""
    folder = Path(cache) / "smollm2"
    hf = folder / "hf"
    if not (hf / "model.safetensors").exists():
        from transformers import AutoTokenizer

        from ..lm.embedded import smollm2_gguf

        gguf = smollm2_gguf(cache)  # fetched on first use
        _from_gguf(gguf).save_pretrained(hf)
        AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf.name).save_pretrained(hf)
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


def use_head(model, head) -> None:
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
    head: str = "vq",
    head_budget: float = 0.0,
    token_dim: int = 8,
) -> Path:
    """Load a causal LM, replace its head by a head built from the head's weight, save to ``out``.

    ``head``: vq, hybrid, twolevel or hybrid-twolevel (built as ``hf.build`` describes). Sizes:
    ``head_budget`` F > 0 sizes it to F x the dense head's parameters by ``heads.size_for_budget``
    (the rule training uses); else ``codebook_size`` codes (the tail codes for the hybrids, whose
    ``exact_tokens`` frequent tokens get exact rows) and ``token_dim`` for the two-level heads.
    ``exact_tokens`` > 0 with ``vq`` spends that many of the K codes on the most frequent tokens of
    ``corpus`` (singleton codes holding their exact rows) and k-means the rest.
    """
    from ..heads import size_for_budget
    from ..lm.train import writable_folder
    from .build import BUILDABLE, head_from_rows

    if head not in BUILDABLE:
        raise ValueError(f"head must be one of {BUILDABLE}, got {head!r}")
    if not isinstance(head_budget, (int, float)) or not 0 <= head_budget <= 1:
        raise ValueError(f"head_budget must be in [0, 1], got {head_budget!r}")
    if not isinstance(codebook_size, int) or isinstance(codebook_size, bool) or codebook_size < 1:
        raise ValueError(f"codebook_size must be an int >= 1, got {codebook_size!r}")
    if head == "vq" and (not isinstance(exact_tokens, int) or not 0 <= exact_tokens < codebook_size):
        raise ValueError(f"exact_tokens must be an int in [0, codebook_size={codebook_size}), got {exact_tokens!r}")
    if head.startswith("hybrid") and not head_budget and (not isinstance(exact_tokens, int) or exact_tokens < 1):
        raise ValueError(f"head {head!r} without --head-budget needs exact_tokens >= 1 (its frequent tokens), got {exact_tokens!r}")
    if init not in ("kmeans", "random", "frequency"):
        raise ValueError(f"init must be 'kmeans', 'random' or 'frequency', got {init!r}")
    writable_folder(out)  # before the minutes of loading and clustering
    model, source = load_causal_lm(spec, cache)
    dense = model.get_output_embeddings().weight.detach().clone()  # (V, d); a copy, as it may be tied
    V, d = dense.shape
    if head_budget:
        sizes = size_for_budget(head, head_budget, d, V, bias=bias)
    else:
        sizes = {"codebook_size": codebook_size, "bias": bias, "token_dim": token_dim, "n_frequent": exact_tokens}
    frequent = None
    if exact_tokens or head.startswith("hybrid"):
        from ..lm.data import token_counts, tokenize_corpus

        if not (source / "tokenizer.json").exists():
            raise ValueError(f"frequent tokens need the model's tokenizer.json in {source}")
        splits, _, _ = tokenize_corpus(corpus, str(source / "tokenizer.json"), cache)
        frequent = torch.sort(token_counts(splits["train"], V), descending=True, stable=True).indices
    if head == "vq" and exact_tokens and not head_budget:
        head = exact_plus_kmeans(dense, codebook_size, frequent[:exact_tokens], seed, bias)
    elif head == "vq" and init != "kmeans":
        head = VQLogitsHead.from_weight(dense, sizes["codebook_size"], init=init, seed=seed, bias=sizes["bias"], progress=True)
    else:
        head = head_from_rows(head, dense, sizes, frequent, seed)
    use_head(model, head)
    out = Path(out)
    if (source / "tokenizer.json").exists():
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (source / name).exists():
                (out / name).write_bytes((source / name).read_bytes())
    save_pretrained(model, out, dense_head=dense, source=spec)  # vqlogits.json last: its presence means the folder is complete
    return out


def save_pretrained(model, out: str | Path, dense_head: torch.Tensor | None = None, source: str | None = None, extra: dict | None = None) -> None:
    """config.json, model.safetensors, dense_head.safetensors and, last, vqlogits.json (the head's kind and shape, ``extra``)."""
    from safetensors.torch import save_file

    head = vqlogits_head(model, "greedy", "vocab_size")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Each file is replaced atomically: calibration rewrites a finished folder, and a kill must not damage it.
    write_atomic(out / "config.json", model.config.to_json_file)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_atomic(out / "model.safetensors", lambda tmp: save_file(state, tmp))
    if dense_head is not None:
        write_atomic(out / "dense_head.safetensors", lambda tmp: save_file({"weight": dense_head.contiguous()}, tmp))
    old = json.loads((out / "vqlogits.json").read_text()) if (out / "vqlogits.json").exists() else {}
    # Keep what earlier steps recorded (source, calibration history), update the head's shape.
    shape = head_shape(head)
    meta = {**old, **(extra or {}), "format": FORMAT, **shape, "vocab_size": head.vocab_size, "d_model": head.d_model, "architecture": model.config.model_type}
    meta["source"] = source or old.get("source")
    write_json(out / "vqlogits.json", meta)


def head_shape(head) -> dict:
    """What ``load_pretrained`` needs to rebuild ``head`` (saved in vqlogits.json)."""
    from ..heads import HybridHead, HybridTwoLevelHead, TwoLevelHead
    from ..heads.indexed import IndexedHead

    if isinstance(head, IndexedHead):
        return {"head": "indexed", "clusters": head.clusters, "probes": head.probes}
    out = {"bias": head.bias is not None}
    if isinstance(head, (HybridHead, HybridTwoLevelHead)):
        out.update(n_frequent=head.n_frequent, codebook_size=head.tail_codes)
    else:
        out.update(codebook_size=head.codebook_size)
    if isinstance(head, TwoLevelHead):
        out.update(token_dim=head.proj.shape[1])
    name = {HybridTwoLevelHead: "hybrid-twolevel", TwoLevelHead: "twolevel", HybridHead: "hybrid", VQLogitsHead: "vq"}[type(head)]
    return {"head": name, **out}


def load_pretrained(folder: str | Path, model=None):
    """The compressed model saved in ``folder``; its logits equal the saved model's exactly, and its
    training loss goes through the head's own loss (``hf.training.patch``: no (N, V) logits).

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
    kind = meta.get("head", "vq")
    if kind == "indexed":
        from ..heads.indexed import IndexedHead

        use_head(model, IndexedHead(d, V, meta["clusters"], meta["probes"]))
    else:
        from ..heads import build_head

        use_head(model, build_head(kind, d, V, meta["codebook_size"], meta["bias"], token_dim=meta.get("token_dim", 8), n_frequent=meta.get("n_frequent", 0)))
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    from .training import patch

    return patch(model.eval())  # model(input_ids, labels=...).loss through the head's own loss


def dense_head_weight(folder: str | Path) -> torch.Tensor:
    from safetensors.torch import load_file

    path = Path(folder) / "dense_head.safetensors"
    if not path.exists():
        raise ValueError(f"{path} is missing: the original head is needed as the teacher")
    return load_file(path)["weight"]


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int = 32, temperature: float = 1.0, top_k=None, top_p=None, do_sample: bool = False, generator=None, eos_token_id: int | None = None, exact: bool = True) -> torch.Tensor:
    """Decode with the backbone's KV cache and the head's compact greedy / sample: no (B, V) logits.

    VQ head: same distribution per step as ``model.generate(..., do_sample, temperature, top_k,
    top_p)``; greedy decoding gives the same tokens. Indexed head: greedy is the dense model's
    (``exact=True``) or its probed approximation (``exact=False``); sampling is ``IndexedHead.sample``.
    (B, T) -> (B, T + new).
    """
    from transformers import DynamicCache

    from ..heads.indexed import IndexedHead

    head = vqlogits_head(model, "greedy", "sample")
    greedy = (lambda h: head.greedy(h, exact=exact)) if isinstance(head, IndexedHead) else head.greedy
    backbone = model.base_model
    cache = DynamicCache()
    ids = input_ids
    step_input = input_ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        hidden = backbone(input_ids=step_input, past_key_values=cache, use_cache=True).last_hidden_state[:, -1]  # (B, d)
        nxt = head.sample(hidden, temperature, top_k, top_p, generator) if do_sample else greedy(hidden)
        if eos_token_id is not None:
            nxt = torch.where(done, eos_token_id, nxt)
            done |= nxt == eos_token_id
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        step_input = nxt[:, None]
        if eos_token_id is not None and bool(done.all()):
            break
    return ids


def generate_text(folder: str | Path, prompt: str, max_new_tokens: int = 48, temperature: float = 1.0, top_k=None, top_p=None, do_sample: bool = False, seed: int = 0, exact: bool = True) -> str:
    """Prompt in, continuation out, through ``generate`` (the compact path)."""
    from tokenizers import Tokenizer

    folder = Path(folder)
    model = load_pretrained(folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = torch.tensor([tok.encode(prompt).ids])
    eos = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else None
    g = torch.Generator().manual_seed(seed)
    out = generate(model, ids, max_new_tokens, temperature, top_k, top_p, do_sample, g, eos, exact)
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
    gaps = []  # per window: mean log-loss of compressed minus original
    from ..lm.data import eval_windows

    for w in tqdm(eval_windows(data, block, max_tokens, batch=1), desc="compare", leave=False):
        x, y = w[:, :-1], w[0, 1:]
        h = backbone(input_ids=x).last_hidden_state[0]  # (T, d)
        h_o = h if original_backbone is backbone else original_backbone(input_ids=x).last_hidden_state[0]
        logp_o = torch.log_softmax(h_o @ dense_weight.T, dim=-1)  # (T, V)
        logp_c = torch.log_softmax(vq(h), dim=-1)
        window_o, window_c = -float(logp_o.gather(1, y[:, None]).sum()), -float(logp_c.gather(1, y[:, None]).sum())
        nll_o, nll_c = nll_o + window_o, nll_c + window_c
        gaps.append((window_c - window_o) / y.numel())
        kl += float((logp_o.exp() * (logp_o - logp_c)).sum())
        agree += float((logp_o.argmax(-1) == logp_c.argmax(-1)).sum())
        count += y.numel()
    return {"ppl_original": math.exp(nll_o / count), "ppl_compressed": math.exp(nll_c / count), "ppl_ratio_interval95": ratio_interval(gaps),
            "kl_original_to_compressed": kl / count, "top1_agreement": agree / count, "eval_tokens": count}


def ratio_interval(gaps: list[float]) -> list[float] | None:
    """95% interval of perplexity compressed / original from per-window log-loss gaps (paired t over
    windows; adjacent windows of one document are not independent, so read it as a lower bound on
    the uncertainty). None with fewer than 2 windows."""
    from ..lm.report import t975

    if len(gaps) < 2:
        return None
    mean, half = statistics.fmean(gaps), t975(len(gaps) - 1) * statistics.stdev(gaps) / math.sqrt(len(gaps))
    return [math.exp(mean - half), math.exp(mean + half)]


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
    splits, _, _ = tokenize_corpus(corpus, str(folder / "tokenizer.json"), cache)
    if meta.get("head") == "indexed":  # the logits are the original's: agreement and speed are what differ
        from .accelerate import hidden_states, measure_index

        head = model.get_output_embeddings()
        h = hidden_states(model, splits[split], min(max_tokens, 2048))
        rows = measure_index(head, head.weight, h, [head.probes], batches=(1,), tv_rows=min(256, h.shape[0]))
        return {"folder": str(folder), "corpus": corpus, "split": split, "tokens": h.shape[0], "modes": rows}
    dense = dense_head_weight(folder)
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
