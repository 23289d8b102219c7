"""``vqlogits compress``: replace a causal LM's output layer by a smaller head built from its rows."""

from __future__ import annotations

from pathlib import Path

import torch

from ..files import writable_folder
from ..heads import FROM_ROWS, KINDS, VQLogitsHead, size_for_budget
from ..lm.data import token_counts, tokenize_corpus
from .build import head_from_rows
from .folder import save_pretrained
from .load import copy_tokenizer, load_causal_lm, use_head


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
    if init not in ("kmeans", "random", "frequency"):
        raise ValueError(f"init must be 'kmeans', 'random' or 'frequency', got {init!r}")
    writable_folder(out)  # before the minutes of loading and clustering
    model, source = load_causal_lm(spec, cache)
    dense = model.get_output_embeddings().weight.detach().clone()  # (V, d); a copy, as it may be tied
    V, d = dense.shape
    if head_budget:
        sizes = size_for_budget(head, head_budget, d, V, bias=bias)
    elif head == "vq":  # exact_tokens of the K codes hold frequent tokens' exact rows
        sizes = {"codebook_size": codebook_size - exact_tokens, "bias": bias, "n_frequent": exact_tokens}
    else:
        sizes = {"codebook_size": codebook_size, "bias": bias, "token_dim": token_dim, "n_frequent": exact_tokens}
    frequent = None
    if sizes.get("n_frequent") or frequent_kind:
        if not (source / "tokenizer.json").exists():
            raise ValueError(f"frequent tokens need the model's tokenizer.json in {source}")
        splits, _, _ = tokenize_corpus(corpus, str(source / "tokenizer.json"), cache)
        frequent = torch.sort(token_counts(splits["train"], V), descending=True, stable=True).indices
    if head == "vq" and init != "kmeans" and not sizes.get("n_frequent"):
        built = VQLogitsHead.from_weight(
            dense, sizes["codebook_size"], init=init, seed=seed, bias=sizes["bias"], progress=True
        )
    else:
        built = head_from_rows(head, dense, sizes, frequent, seed)
    use_head(model, built)
    out = Path(out)
    copy_tokenizer(source, out)
    save_pretrained(
        model, out, dense_head=dense, source=spec
    )  # vqlogits.json last: its presence means the folder is complete
    return out
