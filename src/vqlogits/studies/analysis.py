"""Where a VQ head's perplexity goes: the code it picks vs the token inside the code.

With a fixed map, ``-log P(y|h) = -log P(code|h) - log P(y|code)``, and the second term cannot
depend on the context. On the test split this measures, per token (nats):

* for the VQ run: the code term and the within-code term;
* for the dense run, grouped by the same map: its code term, and its within-code term
  ``-log p(y|h) / sum_{v in code(y)} p(v|h)``, which does use the context;
* the unigram within-code entropy, ``-log count(y) / count(code(y))`` on the train split: the
  best any context-free within-code distribution (the bias) can do on average.

If the analysis holds, VQ's within-code term is about the unigram one, and VQ's loss gap to dense
is about ``unigram within - dense within``, an estimate of I(Y; H | code).
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ..data.corpora import eval_windows, token_counts, tokenize_corpus
from ..files import USER_CACHE
from ..heads import VQLogitsHead
from ..lm.experiments import load_model


@torch.no_grad()
def within_code_analysis(dense_run, vq_run, max_tokens: int = 65536, batch: int = 16, cache=None) -> dict:
    dense, dcfg = load_model(dense_run)
    vq, vcfg = load_model(vq_run)
    if not isinstance(vq.head, VQLogitsHead):
        raise ValueError(f"{vq_run} is not a VQ run (head {type(vq.head).__name__})")
    if (dcfg.corpus, dcfg.tokenizer) != (vcfg.corpus, vcfg.tokenizer):
        raise ValueError(
            f"runs differ in corpus or tokenizer: {(dcfg.corpus, dcfg.tokenizer)} vs {(vcfg.corpus, vcfg.tokenizer)}"
        )
    splits, _, meta = tokenize_corpus(
        vcfg.corpus, vcfg.tokenizer, cache or vcfg.cache or USER_CACHE, splits=("train", "test")
    )
    V, head = meta["vocab_size"], vq.head
    M, K = head.assignment, head.codebook_size
    counts = token_counts(splits["train"], V).double() + 1.0  # add-one
    code_counts = torch.zeros(K, dtype=torch.float64).index_add_(0, M, counts)
    sums = dict.fromkeys(
        ("vq_total", "vq_code", "vq_within", "dense_total", "dense_code", "dense_within", "unigram_within"), 0.0
    )
    n = 0
    windows = eval_windows(splits["test"], vq.cfg.block_size, max_tokens, batch)  # the tokens `perplexity` reads
    for w in tqdm(windows, desc="analyze", unit="batch"):
        x, y = w[:, :-1], w[:, 1:].reshape(-1)
        code = M[y]
        # VQ: code term from the compact form, within term from the (context-free) bias
        h = vq.hidden(x)
        z = head.code_logits(h).reshape(-1, K).double()
        log_code = torch.log_softmax(z + head.log_code_mass().double(), -1)
        log_p_vq = torch.log_softmax(head(h).reshape(-1, V).double(), -1).gather(1, y[:, None]).squeeze(1)
        vq_code = -log_code.gather(1, code[:, None]).squeeze(1)
        # dense, grouped by the same map
        log_p = torch.log_softmax(dense.head(dense.hidden(x)).reshape(-1, V).double(), -1)
        mass = torch.zeros(log_p.shape[0], K, dtype=torch.float64).index_add_(1, M, log_p.exp())
        dense_code = -torch.log(mass.gather(1, code[:, None]).squeeze(1))
        dense_total = -log_p.gather(1, y[:, None]).squeeze(1)
        sums["vq_total"] += float(-log_p_vq.sum())
        sums["vq_code"] += float(vq_code.sum())
        sums["vq_within"] += float((-log_p_vq - vq_code).sum())
        sums["dense_total"] += float(dense_total.sum())
        sums["dense_code"] += float(dense_code.sum())
        sums["dense_within"] += float((dense_total - dense_code).sum())
        sums["unigram_within"] += float(-(torch.log(counts[y]) - torch.log(code_counts[code])).sum())
        n += y.numel()
    r = {k: v / n for k, v in sums.items()}
    r["gap_total"] = r["vq_total"] - r["dense_total"]
    r["gap_within"] = r["vq_within"] - r["dense_within"]
    r["gap_code"] = r["vq_code"] - r["dense_code"]
    r["info_estimate"] = r["unigram_within"] - r["dense_within"]  # I(Y; H | code), under the dense model
    r["ppl_ratio"] = math.exp(r["gap_total"])
    r["tokens"] = n
    return r


def summary_text(r: dict) -> str:
    """The analysis in words and units, as ``vqlogits analyze`` prints it."""
    return "\n".join(
        [
            f"{r['tokens']:,} test tokens. Loss in nats per token (perplexity ratio vq / dense: {r['ppl_ratio']:.3f}):",
            f"  vq     {r['vq_total']:.4f} = code {r['vq_code']:.4f} + within code {r['vq_within']:.4f}",
            f"  dense  {r['dense_total']:.4f} = code {r['dense_code']:.4f} + within code {r['dense_within']:.4f}"
            "  (dense probabilities grouped by the vq map)",
            f"  gap    {r['gap_total']:+.4f} = code {r['gap_code']:+.4f} + within code {r['gap_within']:+.4f}",
            "What the context tells about the token inside its code, I(Y; H |"
            f" code) under dense: {r['info_estimate']:.4f}"
            " nats per token; a fixed map with a context-free within-code term cannot use it.",
        ]
    )
