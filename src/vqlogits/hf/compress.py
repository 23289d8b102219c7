"""``vqlogits compress``: replace a causal LM's output layer by a smaller head built from its rows."""

from __future__ import annotations

import warnings
from dataclasses import asdict, fields
from pathlib import Path

import torch

from ..data.corpora import token_counts, tokenize_corpus
from ..files import USER_CACHE, output_folder
from ..heads import KINDS, head_from_rows, rows_sizes
from .config import CompressConfig
from .folder import quantized_parts, save_pretrained
from .load import copy_tokenizer, load_causal_lm, lossless_dtype, use_head

# The options that shape a head; each kind takes some of them (its ROW_OPTIONS).
SHAPING = (
    "head_budget",
    "codebook_size",
    "token_dim",
    "init",
    "exact_tokens",
    "bits",
    "group_size",
    "method",
    "part_bits",
)


def _ignored_options(cfg: CompressConfig, given: set[str] | None = None) -> None:
    """Warn, by name, about a shaping option the head does not take: one of ``given`` (the options
    passed as keywords), else one set away from its default."""
    takes = KINDS[cfg.head].cls.ROW_OPTIONS
    for f in fields(cfg):
        chosen = f.name in given if given is not None else getattr(cfg, f.name) != f.default
        if f.name in SHAPING and f.name not in takes and chosen:
            flag = "--" + f.name.replace("_", "-")
            warnings.warn(f"{flag} is ignored: a {cfg.head} head takes {', '.join(takes)}", stacklevel=3)


def _frequent_tokens(cfg: CompressConfig, source: Path, vocab_size: int) -> torch.Tensor:
    """Token ids by decreasing count in the train split of ``cfg.corpus``."""
    if not (source / "tokenizer.json").exists():
        raise ValueError(f"frequent tokens need the model's tokenizer.json in {source}")
    cache = cfg.cache or USER_CACHE
    splits, _, _ = tokenize_corpus(cfg.corpus, str(source / "tokenizer.json"), cache, splits=("train",))
    return torch.sort(token_counts(splits["train"], vocab_size), descending=True, stable=True).indices


def compress(cfg: CompressConfig | None = None, /, **options) -> Path:
    """Load a causal LM, replace its head by a head built from the head's weight, save to ``cfg.out``.

    ``cfg`` (or its fields as keywords): ``head`` is built by its kind's ``from_rows`` (heads/),
    sized by ``head_budget`` F > 0 to F x the dense head's parameters (``heads.size_for_budget``,
    the rule training uses), else by the kind's own options (``codebook_size``, ``exact_tokens``,
    ``token_dim``, or ``bits`` / ``group_size`` / ``method`` for ``quantized``). A shaping option
    the kind does not take is named in a warning: any passed as a keyword, or with ``cfg``, any set
    away from its default.

    ``out``: a new or empty folder, or one an interrupted compress left; a finished model folder or
    any other files are refused unless ``overwrite`` (``files.output_folder``). ``dtype`` of what
    is written: default the smallest that holds the source's weights exactly (``load.lossless_dtype``).
    A dense head tied to the input embedding is not written a second time. ``part_bits`` (8 or 4)
    stores a hybrid's codebook and token vectors quantized (``folder.quantized_parts``). The config
    is saved in vqlogits.json under ``compress``.
    """
    given = set(options) if cfg is None else None
    cfg = cfg or CompressConfig(**{k: str(v) if isinstance(v, Path) else v for k, v in options.items()})
    cfg.check()
    _ignored_options(cfg, given)
    if cfg.part_bits and not KINDS[cfg.head].frequent:
        raise ValueError(
            f"part_bits must be 4 or 8 and needs a hybrid head, got part_bits={cfg.part_bits}, head={cfg.head!r}"
        )
    given = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    if not cfg.head_budget:
        rows_sizes(cfg.head, given, 0, 0)  # the kind's checks, before the minutes of loading
    with output_folder(
        cfg.out, "model", cfg.overwrite, finished="vqlogits.json"
    ) as out:  # before the minutes of loading
        model, source = load_causal_lm(cfg.model, cfg.cache or USER_CACHE)
        embedding = model.get_input_embeddings().weight
        stored = getattr(torch, cfg.dtype) if cfg.dtype else lossless_dtype(model)
        dense = model.get_output_embeddings().weight.detach().clone()  # (V, d); a copy, as it may be tied
        tied = dense.shape == embedding.shape and torch.equal(dense, embedding.detach())
        V, d = dense.shape
        sizes = rows_sizes(cfg.head, given, d, V)
        wants_frequent = sizes.get("n_frequent") or KINDS[cfg.head].frequent
        frequent = _frequent_tokens(cfg, source, V) if wants_frequent else None
        built = head_from_rows(cfg.head, dense, sizes, frequent, cfg.seed)
        use_head(model, built)
        extra = {"compress": asdict(cfg)}
        if cfg.part_bits:
            extra["quantized_parts"] = quantized_parts(built, cfg.part_bits)
        copy_tokenizer(source, out)
        # vqlogits.json last: its presence means the folder is complete
        # a tied teacher is named by the embedding's key rather than written twice
        teacher = next(k for k, v in model.state_dict(keep_vars=True).items() if v is embedding) if tied else dense
        save_pretrained(model, out, dense_head=teacher, source=cfg.model, extra=extra, dtype=stored)
    return out
