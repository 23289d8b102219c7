"""Learned token -> code maps: tokens move between codes during training, for every head with a map.

Rule. Over a window of steps, estimate for every seen token v and code c how much the window's
log-likelihood would change if v alone sat in c: ``gain[v, c] = own[v, c] - taken[v, c]``.

- ``own[v, c]``: the log-likelihood terms of the rows whose target is v that depend on c.
- ``taken[v, c]``: the probability v would take from the other rows' normalisers in c.

Every ``reassign_every`` steps, the seen tokens whose best allowed code beats their current one
by the largest margin move there, at most ``frac`` of them, because the first-order estimate
ignores that many tokens moving together shift the code masses.

Per head, with ``z = h @ C.T`` the code logits of the map being learned:

- vq, hybrid (``logit_v = z[M(v)] + b_v``): ``own = sum_{n: y_n = v} z[n, c]``,
  ``taken = exp(b_v) * sum_n exp(z[n, c] - log Z_n)``, first order in the probability v takes
  from each row's normaliser, over all rows.
- vq-lowrank, rvq (``logit_v = z_m[c_m(v)] + r[n, v]``, r context-dependent): the same ``own``;
  ``taken = sum_n exp(z_m[n, c] + r[n, v] - log Z_n)`` needs the full distribution, so it is
  estimated on ``samples`` random rows per step (unbiased). rvq learns each codebook's map.
- twolevel, hybrid-twolevel (``log P(v) = log P(c | h) + s[n, v] - lse_c[n]``, lse over the
  code's members): a move only changes the within-code normalisers, so the gain of moving one
  token is exact: ``own = sum_{n: y_n = v} log P(c | h_n) + s[n, v] - log(exp(lse_c[n]) + exp(s[n, v]))``
  (no second term when v is already in c), and ``taken[v, c]`` sums, over the rows whose target
  is another token of c, ``log(1 + q)`` (v joins; q = v's share of c) or ``-log(1 - q)`` (v is
  there). Both are exact sums over all rows, ``samples`` rows at a time.
- Hybrids (hybrid, hybrid-twolevel) move only tail tokens, and only between tail codes.

Under torchrun every rank observes its shard of the global batch; before each reassignment the
window statistics are summed over ranks (``all_reduce``), so every rank computes the same moves
from the same numbers, and vq-lowrank / rvq sample their rows from the global batch with a seeded
generator shared by all ranks. The maps stay identical everywhere; with ``VQLOGITS_DEBUG=1`` that
is checked at every reassignment. A checkpoint holds the statistics summed over ranks (on rank 0;
the others resume from zero), so it resumes under any number of processes.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from . import KINDS, RVQHead, TwoLevelHead, VQLogitsHead, VQLowRankHead

LEARNABLE = tuple(k.cls for k in KINDS.values() if k.has_map)


class MapLearner:
    """Window statistics and moves for ``head``'s token -> code map(s); see the module docstring.

    ``samples``: rows sampled per step for vq-lowrank / rvq's ``taken``, and the chunk size of the
    two-level statistics. Memory: two (maps, V, K) fp32 matrices (one, and a (K,) vector, for
    vq / hybrid).
    """

    def __init__(self, head, frac: float, samples: int = 128, seed: int = 0):
        if not isinstance(head, LEARNABLE):
            raise ValueError(
                f"the learned map needs a head with a token -> code map ({[c.__name__ for c in LEARNABLE]}),"
                f" got {type(head).__name__}"
            )
        if not 0 < frac <= 1:
            raise ValueError(f"reassign_frac must be in (0, 1], got {frac!r}")
        self.frac, self.samples, self.seed, self.calls = frac, samples, seed, 0
        distributed = dist.is_available() and dist.is_initialized()
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        maps = self._maps(head)
        M, V, K = len(maps), head.vocab_size, self._codes(head)
        device = maps[0].device
        self.factorised = isinstance(head, VQLogitsHead)  # taken[v, c] = exp(b_v) * A[c]
        self.own = torch.zeros(M, V, K, device=device)
        if self.factorised:
            self.taken = torch.zeros(M, 1, K, device=device)
        elif isinstance(head, TwoLevelHead):  # stored (K, V): observe adds whole rows per code
            self.taken = torch.zeros(M, K, V, device=device).transpose(1, 2)
        else:
            self.taken = torch.zeros(M, V, K, device=device)
        self.seen = torch.zeros(V, device=device)

    @staticmethod
    def _maps(head) -> list[torch.Tensor]:
        if isinstance(head, RVQHead):
            return list(head.assignments)
        return [head.vq.assignment if isinstance(head, VQLowRankHead) else head.assignment]

    @staticmethod
    def _codes(head) -> int:
        return (
            head.codebooks.shape[1]
            if isinstance(head, RVQHead)
            else (head.vq if isinstance(head, VQLowRankHead) else head).codebook_size
        )

    def _sample_rows(self, n: int, seq: int, device) -> tuple[torch.Tensor, float]:
        """This rank's rows of a sample of the global batch, and the scale of their sum.

        The global batch holds ``world`` x ``n`` flattened rows, sequences of ``seq`` tokens, and this
        rank holds sequences ``rank::world``; every rank draws the same global sample."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.calls)
        picked = torch.randperm(n * self.world, generator=g)[: self.samples]  # global flat rows
        sequence, position = picked // seq, picked % seq
        mine = sequence % self.world == self.rank
        local = (sequence[mine] // self.world) * seq + position[mine]
        return local.to(device), n * self.world / picked.numel()

    @torch.no_grad()
    def observe(self, head, h: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch (hidden states (..., d), targets (...)) to the window."""
        dtype = next(head.parameters()).dtype
        flat, y = h.detach().reshape(-1, head.d_model).to(dtype), targets.reshape(-1)
        self.seen += torch.bincount(y, minlength=self.seen.numel())
        self.calls += 1
        if isinstance(head, TwoLevelHead):
            for chunk in torch.arange(flat.shape[0], device=flat.device).split(
                self.samples
            ):  # (chunk, V) stays in cache
                self._observe_twolevel(head, flat[chunk], y[chunk])
            return
        if isinstance(head, VQLogitsHead):
            z = head.code_logits(flat).float()  # (N, K)
            self.own[0].index_add_(0, y, z)
            log_z = torch.logsumexp(z + head.log_code_mass().detach().float(), dim=-1, keepdim=True)  # (N, 1)
            self.taken[0, 0] += torch.exp(z - log_z).sum(0)
            return
        rows, scale = self._sample_rows(flat.shape[0], targets.shape[-1] if targets.dim() > 1 else 1, flat.device)
        logp = torch.log_softmax(head(flat[rows]).float(), dim=-1)  # (n, V)
        codebooks = head.codebooks if isinstance(head, RVQHead) else head.vq.codebook[None]
        for m, (codebook, assignment) in enumerate(zip(codebooks, self._maps(head), strict=True)):
            z = (flat @ codebook.T).float()  # (N, K)
            self.own[m].index_add_(0, y, z)
            zs = z[rows]
            peak = zs.max(-1, keepdim=True).values  # (n, 1), keeps both exponentials finite
            # exp(z[n, c] + r[n, v] - log Z_n) = exp(logp[n, v] - z[n, c_m(v)] + peak) * exp(z[n, c] - peak)
            rest = torch.exp((logp - zs[:, assignment] + peak).clamp(max=80.0))  # (n, V)
            self.taken[m] += scale * (rest.T @ torch.exp(zs - peak))  # (V, K)

    def _observe_twolevel(self, head: TwoLevelHead, flat: torch.Tensor, y: torch.Tensor) -> None:
        log_code = head._log_code(flat).float()  # (N, K)
        s, lse = (t.float() for t in head.within_logits(flat))  # (N, V), (N, K)
        s_y = s.gather(1, y[:, None])  # (N, 1)
        code_y = head.assignment[y]
        joined = torch.logaddexp(lse, s_y)  # the code's normaliser with y added
        joined.scatter_(1, code_y[:, None], lse.gather(1, code_y[:, None]))  # y is already in its own code
        self.own[0].index_add_(
            0, y, torch.nan_to_num(log_code + s_y - joined, neginf=-1e4)
        )  # empty codes: never chosen
        log_share = s - lse.gather(1, code_y[:, None])  # (N, V): each token's share inside y's code (if it sat there)
        member = head.assignment[None, :] == code_y[:, None]  # (N, V)
        # Row n loses -log(1 - share) to v for as long as v is in y_n's code, and log(1 + share) once v joins it.
        cost = torch.where(
            member, -torch.log1p(-log_share.exp().clamp(max=1 - 1e-6)), torch.nn.functional.softplus(log_share)
        )
        cost.scatter_(1, y[:, None], 0.0)  # a row's own target takes nothing from it
        self.taken[0].T.index_add_(0, code_y, cost)  # (K, V), contiguous

    @torch.no_grad()
    def gain(self, head, m: int = 0) -> torch.Tensor:
        """``gain[v, c]`` of map ``m`` over the window so far, (V, K)."""
        weight = head.bias.detach().float().exp()[:, None] if self.factorised and head.bias is not None else 1.0
        return self.own[m] - weight * self.taken[m]

    def _windows(self) -> tuple[torch.Tensor, ...]:
        return self.own, self.taken, self.seen

    @torch.no_grad()
    def reassign(self, head) -> float:
        """Apply the rule and clear the window; returns the fraction of the map entries that moved."""
        if self.world > 1:
            for t in self._windows():
                dist.all_reduce(t)  # every rank now holds the global window
        movable, allowed = self.seen > 0, torch.ones(self.own.shape[2], dtype=torch.bool, device=self.seen.device)
        allowed[: getattr(head, "n_frequent", 0)] = False  # hybrids: frequent tokens keep their own codes
        moved = 0
        for m, assignment in enumerate(self._maps(head)):
            gain = self.gain(head, m).masked_fill(~allowed, float("-inf"))  # (V, K)
            best_gain, best = gain.max(dim=1)
            ok = movable & allowed[assignment]
            improvement = torch.where(
                ok, best_gain - gain.gather(1, assignment[:, None]).squeeze(1), torch.zeros_like(best_gain)
            )
            n_move = int(min(int((improvement > 0).sum()), self.frac * int(ok.sum())))
            if n_move > 0:
                movers = torch.topk(improvement, n_move).indices
                new = assignment.clone()
                new[movers] = best[movers]
                if isinstance(head, RVQHead):
                    head.set_assignment(new, m)
                else:
                    (head.vq if isinstance(head, VQLowRankHead) else head).set_assignment(new)
                moved += n_move
        for t in self._windows():
            t.zero_()
        if self.world > 1 and os.environ.get("VQLOGITS_DEBUG") == "1":
            self.check_maps_agree(head)
        return moved / (self.own.shape[0] * self.own.shape[1])

    def check_maps_agree(self, head) -> None:
        """Raise if any rank's maps differ from rank 0's (a collective: call it on every rank)."""
        mine = torch.stack([m.to(torch.float64) for m in self._maps(head)]).flatten()
        mine = torch.stack([mine.sum(), (mine * torch.arange(1, mine.numel() + 1, dtype=torch.float64)).sum()])
        every = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        if any(not torch.equal(e, every[0]) for e in every):
            raise RuntimeError(
                f"learned map differs between ranks after call {self.calls}: checksums {[e.tolist() for e in every]}"
            )

    def state_dict(self) -> dict:
        """The window statistics summed over ranks (a collective under torchrun) and the call count."""
        own, taken, seen = (t.clone() for t in self._windows())
        if self.world > 1:
            for t in (own, taken, seen):
                dist.all_reduce(t)
        return {"own": own, "taken": taken, "seen": seen, "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        """Rank 0 takes the summed window, the other ranks start it from zero: the next all_reduce
        gives every rank the whole window again."""
        for t, name in zip(self._windows(), ("own", "taken", "seen"), strict=True):
            t.copy_(state[name]) if self.rank == 0 else t.zero_()
        self.calls = state["calls"]
