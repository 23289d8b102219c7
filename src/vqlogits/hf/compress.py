"""``vqlogits compress``: replace a causal LM's output layer by a smaller head built from its rows."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import quant
from ..files import USER_CACHE, output_folder
from ..heads import FROM_ROWS, KINDS, VQLogitsHead, size_for_budget
from ..lm.data import token_counts, tokenize_corpus
from .build import head_from_rows
from .folder import quantized_parts, save_pretrained
from .load import copy_tokenizer, load_causal_lm, lossless_dtype, use_head


def compress(
    spec: str,
    codebook_size: int,
    out: str | Path,
    init: str = "kmeans",
    seed: int = 0,
    cache: str | Path = USER_CACHE,
    bias: bool = True,
    exact_tokens: int = 0,
    corpus: str = "pydocs",
    head: str = "vq",
    head_budget: float = 0.0,
    token_dim: int = 8,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    bits: int = 4,
    group_size: int = 32,
    method: str = "hqq",
    part_bits: int = 0,
) -> Path:
    """Load a causal LM, replace its head by a head built from the head's weight, save to ``out``.

    ``head``: vq, hybrid, twolevel, hybrid-twolevel or quantized (built as ``hf.build`` describes;
    quantized: ``bits`` per weight in groups of ``group_size``, ``method`` hqq or rtn). Sizes:
    ``head_budget`` F > 0 sizes it to F x the dense head's parameters by ``heads.size_for_budget``
    (the rule training uses); else ``codebook_size`` codes (the tail codes for the hybrids, whose
    ``exact_tokens`` frequent tokens get exact rows) and ``token_dim`` for the two-level heads.
    ``exact_tokens`` > 0 with ``vq`` spends that many of the K codes on the most frequent tokens of
    ``corpus`` (singleton codes holding their exact rows) and k-means the rest.

    ``out``: a new or empty folder, or one an interrupted compress left; a finished model folder or
    any other files are refused unless ``overwrite`` (``files.output_folder``). ``dtype`` of what
    is written: default the smallest that holds the source's weights exactly (``load.lossless_dtype``).
    A dense head tied to the input embedding is not written a second time. ``part_bits`` (8 or 4)
    stores a hybrid's codebook and token vectors quantized (``folder.quantized_parts``).
    """
    if head not in FROM_ROWS:
        raise ValueError(f"head must be one of {FROM_ROWS}, got {head!r}")
    frequent_kind = KINDS[head].frequent
    if not isinstance(head_budget, (int, float)) or not 0 <= head_budget <= 1:
        raise ValueError(f"head_budget must be in [0, 1], got {head_budget!r}")
    if not isinstance(codebook_size, int) or isinstance(codebook_size, bool) or codebook_size < 1:
        raise ValueError(f"codebook_size must be an int >= 1, got {codebook_size!r}")
    if head == "vq" and (not isinstance(exact_tokens, int) or not 0 <= exact_tokens < codebook_size):
        raise ValueError(f"exact_tokens must be an int in [0, codebook_size={codebook_size}), got {exact_tokens!r}")
    if frequent_kind and not head_budget and (not isinstance(exact_tokens, int) or exact_tokens < 1):
        raise ValueError(
            f"head {head!r} without --head-budget needs exact_tokens >= 1 (its frequent tokens), got {exact_tokens!r}"
        )
    if head == "quantized":
        quant.check(bits, group_size, group_size)  # the row length is checked once the model is loaded
        if method not in quant.METHODS:
            raise ValueError(f"method must be one of {quant.METHODS}, got {method!r}")
        if head_budget:
            raise ValueError("a quantized head is sized by --bits and --group-size, not --head-budget")
    if part_bits and (part_bits not in (4, 8) or not frequent_kind):
        raise ValueError(
            f"part_bits must be 4 or 8 and needs a hybrid head, got part_bits={part_bits!r}, head={head!r}"
        )
    if init not in ("kmeans", "random", "frequency"):
        raise ValueError(f"init must be 'kmeans', 'random' or 'frequency', got {init!r}")
    with output_folder(out, "model", overwrite, finished="vqlogits.json") as out:  # before the minutes of loading
        model, source = load_causal_lm(spec, cache)
        embedding, stored = model.get_input_embeddings().weight, dtype or lossless_dtype(model)
        dense = model.get_output_embeddings().weight.detach().clone()  # (V, d); a copy, as it may be tied
        tied = dense.shape == embedding.shape and torch.equal(dense, embedding.detach())
        V, d = dense.shape
        if head == "quantized":
            quant.check(bits, group_size, d)
            sizes = {"bits": bits, "group_size": group_size, "method": method}
        elif head_budget:
            sizes = size_for_budget(head, head_budget, d, V, bias=bias)
        elif head == "vq":  # exact_tokens of the K codes hold frequent tokens' exact rows
            sizes = {"codebook_size": codebook_size - exact_tokens, "bias": bias, "n_frequent": exact_tokens}
        else:
            sizes = {"codebook_size": codebook_size, "bias": bias, "token_dim": token_dim, "n_frequent": exact_tokens}
        frequent = None
        if sizes.get("n_frequent") or frequent_kind:
            if not (source / "tokenizer.json").exists():
                raise ValueError(f"frequent tokens need the model's tokenizer.json in {source}")
            splits, _, _ = tokenize_corpus(corpus, str(source / "tokenizer.json"), cache, splits=("train",))
            frequent = torch.sort(token_counts(splits["train"], V), descending=True, stable=True).indices
        if head == "vq" and init != "kmeans" and not sizes.get("n_frequent"):
            built = VQLogitsHead.from_weight(
                dense, sizes["codebook_size"], init=init, seed=seed, bias=sizes["bias"], progress=True
            )
        else:
            built = head_from_rows(head, dense, sizes, frequent, seed)
        use_head(model, built)
        extra = {"quantized_parts": quantized_parts(built, part_bits)} if part_bits else None
        copy_tokenizer(source, out)
        # vqlogits.json last: its presence means the folder is complete
        # a tied teacher is named by the embedding's key rather than written twice
        teacher = next(k for k, v in model.state_dict(keep_vars=True).items() if v is embedding) if tied else dense
        save_pretrained(model, out, dense_head=teacher, source=spec, extra=extra, dtype=stored)
    return out
