"""What the learned map's collectives cost under torchrun, against the training step.

    torchrun --nproc_per_node 2 -m vqlogits.bench.ddp [--out runs/bench/ddp.json]

For each head with a map, sized to 2% and 5% of the dense head of the ``tiny`` model at V = 16,384
(the converged benchmark's shape), it times, in one run: a DDP training step of the global batch
(16 x 128 tokens), and the ``all_reduce`` of the map's window statistics that every reassignment
adds. Medians of repeated measurements; rank 0 prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from ..files import write_json
from ..heads import WITH_MAP, size_for_budget
from ..heads.learned_map import MapLearner
from ..lm.model import GPT, ModelConfig
from ..timing import median_seconds

HEADS = WITH_MAP  # every head whose map the learned map moves


def measure(
    vocab_size: int = 16384,
    budgets=(0.02, 0.05),
    batch: int = 16,
    block: int = 128,
    repeats: int = 10,
    reassign_every: int = 100,
) -> list[dict]:
    world = dist.get_world_size()
    rows = []
    for head in HEADS:
        for budget in budgets:
            sizes = {
                ("head_bias" if k == "bias" else k): v
                for k, v in size_for_budget(head, budget, 128, vocab_size).items()
            }
            model = GPT(ModelConfig(vocab_size, 2, 4, 128, block, head=head, **sizes))
            ddp = DDP(model)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            learner = MapLearner(model.head, 0.05)
            g = torch.Generator().manual_seed(dist.get_rank())
            x, y = (torch.randint(0, vocab_size, (batch // world, block), generator=g) for _ in range(2))

            def step():
                loss, h = ddp(x, y, return_hidden=True)
                opt.zero_grad()
                loss.backward()
                opt.step()
                learner.observe(model.head, h, y)

            step()
            step_s, _ = median_seconds(step, repeats, warmup=0, setup=dist.barrier)
            window = learner._windows()
            reduce_s, _ = median_seconds(
                lambda: [dist.all_reduce(t.clone()) for t in window], repeats, warmup=0, setup=dist.barrier
            )
            rows.append(
                {
                    "head": head,
                    "budget": budget,
                    "window_mb": sum(t.numel() * t.element_size() for t in window) / 2**20,
                    "step_s": step_s,
                    "all_reduce_s": reduce_s,
                    "per_reassignment_pct_of_step": 100 * reduce_s / step_s,
                    "amortized_pct": 100 * reduce_s / (reassign_every * step_s),
                }
            )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench/ddp.json", help="JSON results (default: runs/bench/ddp.json)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats (default: 10)")
    args = parser.parse_args(argv)
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    rows = measure(repeats=args.repeats)
    if dist.get_rank() == 0:
        env = {
            "world": dist.get_world_size(),
            "threads": torch.get_num_threads(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "backend": "gloo",
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, {"environment": env, "rows": rows})
        print(
            f"{env}\n\n| head | budget | window | step | all_reduce | per reassignment |"
            " every 100 steps |\n|---|---:|---:|---:|---:|---:|---:|"
        )
        for r in rows:
            print(
                f"| {r['head']} | {100 * r['budget']:g}% | {r['window_mb']:.1f} MB | {1e3 * r['step_s']:.0f} ms |"
                f" {1e3 * r['all_reduce_s']:.1f} ms | {r['per_reassignment_pct_of_step']:.1f}% of a step |"
                f" {r['amortized_pct']:.2f}% |"
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
