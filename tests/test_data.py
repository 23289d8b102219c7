"""Real loaders, tested offline on small files in the hub's own formats."""

import gzip
import json
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vqlogits.data.corpora import load_corpus, tokenize_corpus
from vqlogits.lm.train import TrainConfig, train


def _lines(n, tag):
    return [
        f" = {tag} article {i} = \n" if i % 10 == 0 else f" the {tag} text number {i} has some words in it . \n"
        for i in range(n)
    ]


@pytest.fixture
def wikitext_dir(tmp_path):
    root = tmp_path / "wikitext" / "wikitext-103-raw-v1"
    root.mkdir(parents=True)
    for split, n in (("train", 400), ("validation", 60), ("test", 60)):
        pq.write_table(pa.table({"text": _lines(n, split)}), root / f"{split}-00000-of-00001.parquet")
    return tmp_path / "wikitext"


@pytest.fixture
def c4_dir(tmp_path):
    root = tmp_path / "c4" / "en"
    root.mkdir(parents=True)
    for split, n in (("train", 50), ("validation", 10)):
        with gzip.open(root / f"c4-{split}.00000-of-00001.json.gz", "wt") as f:
            for i in range(n):
                f.write(
                    json.dumps(
                        {
                            "text": f"{split} document {i}. " * 20,
                            "timestamp": "2019-04-25T12:57:54Z",
                            "url": f"https://example.com/{i}",
                        }
                    )
                    + "\n"
                )
    return tmp_path / "c4"


def test_wikitext_keeps_published_splits(wikitext_dir):
    docs = load_corpus(f"wikitext-103:{wikitext_dir}")
    assert (
        "train text number 1 " in docs["train"][0]
        and "validation" in docs["val"][0]
        and "test article" in docs["test"][0]
    )


def test_c4_streams_and_splits_validation(c4_dir):
    docs = load_corpus(f"c4:{c4_dir}")
    assert len(docs["train"]) == 50 and len(docs["val"]) == 5 and len(docs["test"]) == 5
    assert docs["val"][0].startswith("validation document 0")


def test_train_on_wikitext_and_token_cache_is_reused(wikitext_dir, tmp_path):
    cfg = TrainConfig(
        corpus=f"wikitext-103:{wikitext_dir}",
        tokenizer="bpe:300",
        steps=3,
        eval_every=0,
        checkpoint_every=0,
        final_eval_tokens=512,
        cache=str(tmp_path / "cache"),
        out=str(tmp_path / "run"),
        head="vq",
        codebook_size=8,
    )
    r = train(cfg, progress=False)
    assert r["test_ppl"] > 1
    arrays, tok, meta = tokenize_corpus(cfg.corpus, cfg.tokenizer, cfg.cache)
    assert meta["vocab_size"] == tok.get_vocab_size() <= 300
    assert len(list((tmp_path / "cache" / "tokens").iterdir())) == 1  # one cache entry, reused
    assert arrays["train"].dtype.itemsize == 2  # uint16 for V < 65536
    train(
        replace(
            cfg,
            out=str(tmp_path / "run2"),
            tokenizer=str(
                tmp_path
                / "cache"
                / "tokens"
                / next(iter((tmp_path / "cache" / "tokens").iterdir())).name
                / "tokenizer.json"
            ),
        ),
        progress=False,
    )


def test_single_file_corpus_and_glob(tmp_path):
    f = tmp_path / "book.md"
    f.write_text("".join(f"line {i} of the book\n" for i in range(5000)))
    docs = load_corpus(str(f))
    assert sum(len(v) for v in docs.values()) == 25 and all(docs.values())
    (tmp_path / "more").mkdir()
    for i in range(5):
        (tmp_path / "more" / f"n{i}.rst").write_text(f"note {i}")
    assert sum(len(v) for v in load_corpus(str(tmp_path / "more" / "*.rst")).values()) == 5


def test_bpe_too_small_is_refused(wikitext_dir, tmp_path):
    with pytest.raises(ValueError, match="bpe:200.*N >= 257"):
        tokenize_corpus(f"wikitext-103:{wikitext_dir}", "bpe:200", tmp_path / "cache")


def test_token_cache_is_keyed_by_the_tokenizer_file_contents(wikitext_dir, tmp_path):
    corpus, cache = f"wikitext-103:{wikitext_dir}", tmp_path / "cache"

    def entries() -> int:
        return len(list((cache / "tokens").iterdir()))

    small, tok_small, _ = tokenize_corpus(corpus, "bpe:300", cache)
    large, tok_large, _ = tokenize_corpus(corpus, "bpe:400", cache)
    a, b = tmp_path / "a" / "tokenizer.json", tmp_path / "b" / "tokenizer.json"
    for p in (a, b):
        p.parent.mkdir()
        tok_small.save(str(p))
    before = entries()
    ids_a, _, _ = tokenize_corpus(corpus, str(a), cache)
    ids_b, _, _ = tokenize_corpus(corpus, str(b), cache)
    assert entries() == before + 1  # two copies of one tokenizer share one entry
    assert (ids_a["test"] == small["test"]).all() and (ids_b["test"] == small["test"]).all()
    tok_large.save(str(b))  # replaced in place: its old ids must not be served
    ids_b, tok_b, _ = tokenize_corpus(corpus, str(b), cache)
    assert tok_b.get_vocab_size() == tok_large.get_vocab_size()
    assert ids_b["test"].shape == large["test"].shape and (ids_b["test"] == large["test"]).all()


def test_eval_windows_score_every_target_once():
    """Full windows, then one shorter window for the targets left: the targets are data[1:] (or
    its first max_tokens), each once, in order."""
    import numpy as np
    import torch

    from vqlogits.data.corpora import eval_windows

    data = np.arange(1000)  # 999 targets: 15 windows of 64, then 39
    for max_tokens, shapes in ((10**6, [(15, 65), (1, 40)]), (100, [(1, 65), (1, 37)])):
        ws = eval_windows(data, 64, max_tokens, batch=16)
        assert [tuple(w.shape) for w in ws] == shapes
        targets = torch.cat([w[:, 1:].reshape(-1) for w in ws])
        assert torch.equal(targets, torch.arange(1, 1 + min(999, max_tokens)))
