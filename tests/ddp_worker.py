"""Run by tests/test_ddp.py under torchrun (and in one process): the learned map for every head.

usage: ddp_worker.py CORPUS CACHE OUT all|first|crash
``all``: every config; ``first``: the first; ``crash``: the first, stopped at step 10 (after its
checkpoint at step 8)."""

import sys
from dataclasses import replace

from vqlogits.lm import train as train_mod
from vqlogits.lm.train import TrainConfig, train

HEADS = {
    "vq": dict(codebook_size=16),
    "vq-warm": dict(codebook_size=16, mapping="kmeans", warmup_dense_steps=4),  # the dense warm-up swap
    "hybrid": dict(codebook_size=8, n_frequent=4),
    "twolevel": dict(codebook_size=8),
    "hybrid-twolevel": dict(codebook_size=8, n_frequent=4),
    "vq-lowrank": dict(codebook_size=8, rank=4),
    "rvq": dict(codebook_size=8),
}


def configs(corpus: str, cache: str, out: str) -> list[TrainConfig]:
    base = TrainConfig(
        corpus=corpus,
        tokenizer="bpe:300",
        steps=12,
        batch_size=8,
        eval_every=0,
        checkpoint_every=4,
        final_eval_tokens=1024,
        warmup_steps=2,
        cache=cache,
        reassign_every=3,
        reassign_frac=0.3,
    )
    return [replace(base, head=name.removesuffix("-warm"), out=f"{out}/{name}", **kw) for name, kw in HEADS.items()]


if __name__ == "__main__":
    corpus, cache, out, mode = sys.argv[1:5]
    todo = configs(corpus, cache, out)
    if mode != "all":
        todo = todo[:1]
    if mode == "crash":
        real = train_mod.get_batch

        def crashing(data, step, *a, **k):
            if step == 10:
                raise SystemExit(3)
            return real(data, step, *a, **k)

        train_mod.get_batch = crashing
    for cfg in todo:
        train(cfg, progress=False)
