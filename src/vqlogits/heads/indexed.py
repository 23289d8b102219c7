"""Indexed head: a pretrained model's own output rows, clustered into a retrieval index.

Nothing is compressed or retrained: the logits are the dense head's, ``h @ W.T``. The rows are
stored cluster by cluster (a balanced k-means, so every cluster is one contiguous block of L rows),
and decoding reads only the clusters that can matter:

* ``greedy(h, exact=False, probes=P)``: score the K centroids, read the P most promising clusters'
  rows, return the best of them. Approximate.
* ``greedy(h, exact=True)``: the same first round, then a certificate that no unread token can beat
  (or tie) the best one read; rows that cannot be certified go through a certified screen of all
  rows (``screens.int8`` up to ``INT8_MAX_ROWS`` rows, ``screens.bf16`` beyond), which reads only
  the few tokens its bound cannot exclude in fp64. Always equal to the argmax of the exact logits,
  ties to the smallest id. For a block of rows (verified decoding) the screen's one bf16 GEMM costs
  about one fp32 GEMV in all.
* In bf16 (``head.to(torch.bfloat16)``, a bf16 model): the logits are the bf16 rows' exact ones;
  the exact paths use the screen alone, and approximate greedy re-ranks its best probed tokens in
  fp32 (the bf16 probe GEMM rounds its output).
* ``sample``: exact within every cluster; the unread clusters' masses are estimated.
  ``sample(exact=True)`` draws from the dense softmax exactly: a draft from the approximate
  logits (``forward``), then one verification (``functional.speculative_sample``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional as VF
from .._checks import check_hidden, check_reduction, check_sampling, check_state_shapes, check_targets
from ..cluster import balanced_kmeans
from ..screens import int8 as screen_int8
from ..screens.bf16 import BF16Screen, argmax_smallest_id, gamma
from . import probes as policy
from .speculative import accept, dense_probs, draft_sample

# The cluster ranking: centroid score plus this many isotropic standard deviations of h . (w - c).
RANK_SIGMAS = 3.0
# Rows up to which the exact paths screen with the int8 kernel (a GEMV per row) rather than one bf16
# GEMM: on Gemma-3-270M's head (one Zen 4 core) int8 took 25 / 29 / 42 ms at 1 / 2 / 4 rows against
# bf16's 44 / 49 / 49, and 82 / 168 ms at 8 / 16 rows against 49 / 52 (docs/decoding.md).
INT8_MAX_ROWS = 4
REFINE = 8  # a bf16 index's approximate greedy re-ranks this many best probed tokens in fp32


class IndexedHead(nn.Module):
    """Exact dense logits ``h @ W.T``, decoded through a balanced clustering of W's rows.

    Buffers: ``rows`` (K, L, d), W's rows cluster by cluster (zero rows pad the last places when K
    does not divide V); ``token_ids`` (K, L), the token of each row (V for padding); ``centroids``
    (K, d), each cluster's mean row; ``radius`` (K,), the largest distance of a cluster's rows
    from its centroid; ``spread`` (K,), the typical |h . (w - c)| / |h| of the cluster: RMS over
    its rows of sqrt(e^T Sigma e / tr Sigma) with Sigma = E[h h^T] of the hidden states given to
    ``from_weight`` (|e| / sqrt(d) without them). The exact modes' screen (W in token order and in
    bf16) is rebuilt when loaded (not saved).
    """

    def __init__(
        self, d_model: int, vocab_size: int, clusters: int, probes: int | None = None, *, validate: bool = True
    ):
        super().__init__()
        for name, value in (("d_model", d_model), ("vocab_size", vocab_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(clusters, int) or isinstance(clusters, bool) or not 1 <= clusters <= vocab_size:
            raise ValueError(f"clusters must be an int in [1, vocab_size={vocab_size}], got {clusters!r}")
        self.d_model, self.vocab_size, self.clusters, self.validate = d_model, vocab_size, clusters, validate
        self.width = -(-vocab_size // clusters)  # L, rows per cluster
        self.probes = policy.approximate(clusters)
        self.probes = self._check_probes(probes)
        K, L = clusters, self.width
        ids = torch.arange(K * L).view(K, L)
        self.register_buffer("rows", torch.zeros(K, L, d_model))
        self.register_buffer("token_ids", torch.where(ids < vocab_size, ids, vocab_size))
        self.register_buffer("centroids", torch.zeros(K, d_model))
        self.register_buffer("radius", torch.zeros(K))
        self.register_buffer("spread", torch.zeros(K))
        self._refresh()

    def config(self) -> dict:
        return {"clusters": self.clusters, "probes": self.probes}

    @classmethod
    def from_config(cls, config: dict, d_model: int, vocab_size: int) -> "IndexedHead":
        return cls(d_model, vocab_size, config["clusters"], config["probes"])

    def _check_probes(self, probes) -> int:
        """``probes`` (default: ``self.probes``), checked, at most K."""
        probes = self.probes if probes is None else probes
        if not isinstance(probes, int) or isinstance(probes, bool) or probes < 1:
            raise ValueError(f"probes must be an int >= 1, got {probes!r}")
        return min(probes, self.clusters)

    # ---- building -------------------------------------------------------------------------------

    @classmethod
    def from_weight(
        cls,
        weight: torch.Tensor,
        clusters: int,
        hidden: torch.Tensor | None = None,
        spherical: bool = False,
        seed: int = 0,
        probes: int | None = None,
        progress: bool = False,
    ) -> "IndexedHead":
        """Index the (V, d) output matrix ``weight`` with a balanced k-means into ``clusters`` groups.

        ``hidden`` (n, d), hidden states of the model on some text: cluster in the metric
        E_h[(h . (w - c))^2] = (w - c)^T Sigma (w - c), Sigma = E[h h^T], so that a centroid's
        score predicts its rows' logits where the model's hidden states actually lie (measured:
        far better agreement than plain k-means on SmolLM2). ``spherical``: cluster directions.
        """
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (V, d), got shape {tuple(weight.shape)}")
        V, d = weight.shape
        head = cls(d, V, clusters, probes)
        w = weight.detach().float()
        metric = None
        if hidden is not None:
            if hidden.dim() != 2 or hidden.shape[1] != d:
                raise ValueError(f"hidden must have shape (n, d={d}), got {tuple(hidden.shape)}")
            h = hidden.detach().float()
            sigma = h.T @ h / h.shape[0]
            metric = torch.linalg.cholesky(sigma + 1e-6 * float(sigma.diagonal().mean()) * torch.eye(d))
        assignment = balanced_kmeans(w, clusters, seed=seed, metric=metric, spherical=spherical, progress=progress)
        head.set_clusters(w, assignment, None if hidden is None else sigma)
        return head

    @torch.no_grad()
    def set_clusters(self, weight: torch.Tensor, assignment: torch.Tensor, sigma: torch.Tensor | None = None) -> None:
        """Lay out ``weight``'s rows by ``assignment`` (V,), at most L rows per cluster; ``sigma``
        (d, d), E[h h^T] of the hidden states, sets ``spread`` (isotropic without it)."""
        V, K, L = self.vocab_size, self.clusters, self.width
        if tuple(weight.shape) != (V, self.d_model):
            raise ValueError(f"weight must have shape ({V}, {self.d_model}), got {tuple(weight.shape)}")
        if tuple(assignment.shape) != (V,) or int(assignment.min()) < 0 or int(assignment.max()) >= K:
            raise ValueError(f"assignment must be (V,) = ({V},) with values in [0, {K})")
        sizes = torch.bincount(assignment, minlength=K)
        if int(sizes.max()) > L:
            raise ValueError(f"a cluster holds {int(sizes.max())} rows, more than L = ceil(V / K) = {L}")
        order = torch.argsort(assignment, stable=True)
        slot = torch.arange(V) - (torch.cumsum(sizes, 0) - sizes)[assignment[order]]
        ids = torch.full((K, L), V, dtype=torch.long)
        ids[assignment[order], slot] = order
        self.token_ids.copy_(ids)
        self.rows.zero_()
        self.rows[assignment[order], slot] = weight.float()[order]
        real = (ids < V)[..., None]
        self.centroids.copy_(self.rows.sum(1) / sizes.clamp_min(1)[:, None])
        offsets = (self.rows - self.centroids[:, None]) * real  # (K, L, d)
        self.radius.copy_(offsets.norm(dim=-1).max(1).values)
        if sigma is None:
            energy = offsets.pow(2).sum(-1) / self.d_model
        else:
            energy = (offsets @ sigma.float() * offsets).sum(-1) / float(sigma.diagonal().sum())
        self.spread.copy_((energy.sum(1) / sizes.clamp_min(1)).sqrt())
        self._refresh()

    def _refresh(self) -> None:
        self._row_norm = torch.linalg.vector_norm(self.rows, dim=-1, dtype=torch.float32).reshape(-1)  # (K * L,)
        self._real = (self.token_ids < self.vocab_size).reshape(-1)
        self._cluster_of = torch.empty(self.vocab_size, dtype=torch.long, device=self.rows.device)
        self._position = torch.empty(self.vocab_size, dtype=torch.long, device=self.rows.device)
        flat_ids = self.token_ids.reshape(-1)
        positions = torch.nonzero(self._real).squeeze(1)
        self._position[flat_ids[positions]] = positions
        self._cluster_of[flat_ids[positions]] = positions // self.width
        self._sizes = self._real.view(self.clusters, self.width).sum(1)
        self._padded = self.clusters * self.width > self.vocab_size
        self._scratch = torch.empty(0, dtype=self.rows.dtype, device=self.rows.device)
        self._screen = self._screen8 = None  # built on first use by the exact paths: W in token order, bf16, int8

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        K, L, d = self.clusters, self.width, self.d_model
        check_state_shapes(
            state_dict,
            prefix,
            {"rows": (K, L, d), "token_ids": (K, L), "centroids": (K, d), "radius": (K,), "spread": (K,)},
        )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._refresh()

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._refresh()
        return out

    @property
    def weight(self) -> torch.Tensor:
        """The dense (V, d) matrix in token order."""
        return self.rows.reshape(-1, self.d_model)[self._position]

    # ---- the first round: centroids, then the most promising clusters -----------------------------

    def _union(self, flat: torch.Tensor, probes: int):
        """Centroid scores (N, K), |h| (N, 1) and the probed clusters: the union of every row's top
        ``probes`` (sorted), or all of them when that union holds more than half."""
        z = (flat.to(self.centroids.dtype) @ self.centroids.T).float()  # (N, K)
        norm = flat.norm(dim=-1, keepdim=True)
        union = torch.unique((z + RANK_SIGMAS * norm * self.spread.float()).topk(probes, dim=-1).indices)  # (U,)
        if 2 * union.numel() > self.clusters:
            union = torch.arange(self.clusters, device=flat.device)
        return z, norm, union

    def _probe(self, flat: torch.Tensor, probes: int):
        """``_union``, then the probed clusters' tokens and exact logits (N, U * L), padding at -inf."""
        z, norm, union = self._union(flat, probes)
        if union.numel() == self.clusters:  # read them all, contiguously
            rows = self.rows.reshape(-1, self.d_model)
        else:  # into a kept buffer: a fresh allocation this size costs more in page faults than the copy
            size = union.numel() * self.width * self.d_model
            if self._scratch.numel() < size:
                self._scratch = torch.empty(size, dtype=self.rows.dtype, device=flat.device)
            rows = self._scratch[:size].view(union.numel(), self.width, self.d_model)
            rows = torch.index_select(self.rows, 0, union, out=rows).reshape(-1, self.d_model)  # 2-3x rows[union]
        ids = self.token_ids[union].reshape(-1)  # (U * L,)
        logits = (flat.to(rows.dtype) @ rows.T).float()  # bf16 rows (a bf16 model): drafts only, see greedy_stats
        if self._padded:
            logits.masked_fill_(ids == self.vocab_size, float("-inf"))
        return z, norm, union, ids, logits

    def _estimate(self, z: torch.Tensor, norm: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """log of each cluster's estimated mass sum_v exp(logit_v / T), (N, K): h . (w - c) taken as
        Gaussian with standard deviation |h| x spread, so E[exp(h.e / T)] = exp((|h| spread / T)^2 / 2)."""
        spread = self.spread.float()
        return torch.log(self._sizes.float()) + z / temperature + 0.5 * (norm * spread / temperature) ** 2

    # ---- interface ---------------------------------------------------------------------------------

    def forward(self, h: torch.Tensor, probes: int | None = None) -> torch.Tensor:
        """(..., d) -> (..., V) logits for ``model.generate()``: the probed clusters' tokens hold their
        exact logits; every other token holds its cluster's estimated mean, log(mass / size) (see
        ``_estimate``), capped at the row's lowest probed logit, so ``argmax`` equals
        ``greedy(h, exact=False)`` and the unprobed clusters keep about their share of probability.
        ``self.dense_logits(h)`` gives the exact (..., V) logits."""
        check_hidden(h, self.d_model)
        flat = h.reshape(-1, self.d_model)
        z, norm, union, ids, logits = self._probe(flat, self._check_probes(probes))
        real = ids < self.vocab_size
        floor = logits.masked_fill(~real, float("inf")).min(dim=-1, keepdim=True).values
        est = (self._estimate(z, norm) - torch.log(self._sizes.float())).minimum(floor)  # (N, K)
        out = est[:, self._cluster_of]  # (N, V)
        out[:, ids[real]] = logits[:, real]
        return out.reshape(*h.shape[:-1], self.vocab_size)

    def dense_logits(self, h: torch.Tensor) -> torch.Tensor:
        """``h @ W.T``, (..., d) -> (..., V), every entry exact."""
        check_hidden(h, self.d_model)
        weight = self.weight if self.rows.device.type != "cpu" else self._exact_screen().weight
        dtype = torch.promote_types(h.dtype, torch.float32)  # a bf16 model's rows: their logits in fp32
        return h.to(dtype) @ weight.to(dtype).T

    def loss(self, h, targets, ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
        """``F.cross_entropy(h @ W.T, targets)``: the dense head's loss (the index changes nothing)."""
        check_hidden(h, self.d_model)
        check_targets(targets, h, self.vocab_size, ignore_index, self.validate)
        check_reduction(reduction)
        logits = self.dense_logits(h).flatten(0, -2)
        loss = F.cross_entropy(
            logits.to(VF.compute_dtype(logits.dtype)), targets.flatten(), ignore_index=ignore_index, reduction=reduction
        )
        return loss.reshape(targets.shape) if reduction == "none" else loss

    @torch.no_grad()
    def greedy(self, h: torch.Tensor, exact: bool = True, probes: int | None = None) -> torch.Tensor:
        """argmax of the logits, (..., d) -> (...); ``greedy_stats`` also says what it read.

        ``exact=True``: equal to ``(h @ W.T).argmax(-1)`` on every row, ties to the smallest id.
        After the first round, a row is certified when every unprobed cluster's bound, centroid
        score + |h| x radius (+ fp32 rounding slack), is below its best probed logit. Rows left are
        screened by ``screen.BF16Screen`` (one bf16 GEMM over those rows, with a proven rounding
        bound; the few tokens it cannot exclude are read in fp64). A block of rows, as verified
        decoding passes, pays about one fp32 GEMV for the whole block.

        ``exact=False``: the best token of the probed clusters (``probes``, default
        ``self.probes``; with a batch, every row reads the union of the rows' probes, and all
        clusters when that union holds more than half of them).

        The exact first round reads ``probes`` clusters (default ``probes.exact_first_round``).
        """
        return self.greedy_stats(h, exact, probes)[0]

    @torch.no_grad()
    def greedy_stats(self, h: torch.Tensor, exact: bool = True, probes: int | None = None):
        """(``greedy(h, exact, probes)``, stats): the rows certified, the fp32 rows probed, the bf16
        rows screened and the candidates read in fp64."""
        check_hidden(h, self.d_model)
        if exact and self.rows.dtype != torch.float32:  # the first round's certificate assumes fp32 rows
            return self.exact_argmax(h)
        flat = h.reshape(-1, self.d_model).float()
        default = policy.exact_first_round(self.clusters) if exact else self.probes
        z, norm, union, ids, logits = self._probe(flat, self._check_probes(default if probes is None else probes))
        if self.rows.dtype == torch.float32:
            answer = argmax_smallest_id(logits, ids, self.vocab_size)
        else:
            answer = self._best_in_fp32(flat, union, ids, logits)
        stats = {
            "rows": flat.shape[0],
            "probed_rows": ids.numel(),
            "certified": flat.shape[0],
            "screened_rows": 0,
            "verified_rows": 0,
        }
        if exact and flat.shape[0]:
            best = logits.max(dim=-1).values  # (N,), a value of the fp32 reference
            slack = (
                2 * gamma(self.d_model) * norm * (self.centroids.norm(dim=-1) + self.radius + self._row_norm.max())
            )  # both roundings, generously
            bound = (z + norm * self.radius + slack).index_fill(1, union, float("-inf"))
            todo = torch.nonzero(~(bound < best[:, None]).all(dim=-1)).squeeze(1)
            stats["certified"] = flat.shape[0] - todo.numel()
            if todo.numel():
                answer[todo], screened = self._exact_screen(todo.numel()).argmax(flat[todo])
                stats["screened_rows"], stats["verified_rows"] = screened["screened"], screened["candidates"]
                stats["screen"] = screened["screen"]
        return answer.reshape(h.shape[:-1]), stats

    def _best_in_fp32(self, flat, union, ids, logits, k: int = REFINE) -> torch.Tensor:
        """The best of each row's ``k`` best probed tokens by their logits in fp32 (ties to the smallest
        id): a bf16 model's probe GEMM rounds its output to bf16 (a step of 1/8 at logit 20), which
        ranks near-ties anyhow."""
        top = logits.topk(min(k, logits.shape[1]), dim=-1).indices  # (N, k) columns of the probed rows
        slot = union[top // self.width] * self.width + top % self.width  # (N, k) rows of ``rows``
        exact = torch.einsum("nkd,nd->nk", self.rows.reshape(-1, self.d_model)[slot].float(), flat)
        exact = exact.masked_fill(ids[top] == self.vocab_size, float("-inf"))
        return argmax_smallest_id(exact, ids[top], self.vocab_size)

    @torch.no_grad()
    def draft_share(self, h: torch.Tensor, probes: int | None = None) -> float:
        """The share of the clusters an approximate round over h's rows reads (past 1/2, dense is cheaper)."""
        return self._union(h.reshape(-1, self.d_model).float(), self._check_probes(probes))[2].numel() / self.clusters

    @torch.no_grad()
    def exact_argmax(self, h: torch.Tensor):
        """(the exact argmax of each row, (..., d) -> (...), stats as ``greedy_stats``'), by the bf16
        screen alone (no first round): the check verified decoding runs on a block of hidden states."""
        check_hidden(h, self.d_model)
        flat = h.reshape(-1, self.d_model).float()
        ids, screened = self._exact_screen(flat.shape[0]).argmax(flat)
        stats = {"rows": flat.shape[0], "probed_rows": 0, "certified": 0, "screen": screened["screen"]}
        stats.update(screened_rows=screened["screened"], verified_rows=screened["candidates"])
        return ids.reshape(h.shape[:-1]), stats

    def _exact_screen(self, rows: int | None = None) -> BF16Screen:
        """The certified screen for ``rows`` hidden states: the int8 kernel's up to ``INT8_MAX_ROWS``
        (where it applies), else the bf16 GEMM's; both exact (``screens``)."""
        if self.rows.device.type != "cpu":  # the screen's bound assumes the CPU's bf16 kernels
            raise ValueError("exact greedy through the bf16 screen runs on the CPU; move the head with .cpu()")
        if self._screen is None:
            self._screen = BF16Screen(self.weight)
        if rows is not None and rows <= INT8_MAX_ROWS and screen_int8.available(self.d_model):
            if self._screen8 is None:
                w = self._screen.weight
                self._screen8 = screen_int8.Int8Screen(
                    lambda start, end: w[start:end].float(), lambda ids: w[ids].float(), self.vocab_size, self.d_model
                )
            return self._screen8
        return self._screen

    @torch.no_grad()
    def sampling_probs(
        self, h, temperature: float = 1.0, top_k=None, top_p=None, probes: int | None = None
    ) -> torch.Tensor:
        """The distribution ``sample`` draws from, (..., V).

        Without top-k / top-p: P(v) = m_k / sum_j m_j * softmax over k's tokens of logit / T, for v
        in cluster k, with m_k = sum_{v in k} exp(logit_v / T) for the probed clusters and the
        estimate of ``_estimate`` for the others (every token keeps a non-zero probability).
        With top-k / top-p: ``softmax(filter(logit / T))`` over the probed clusters' tokens only."""
        check_sampling(temperature, top_k, top_p)
        check_hidden(h, self.d_model)
        flat = h.reshape(-1, self.d_model).float()
        z, norm, union, ids, logits = self._probe(flat, self._check_probes(probes))
        real = ids < self.vocab_size
        out = torch.zeros(flat.shape[0], self.vocab_size)
        if top_k is not None or top_p is not None:
            out[:, ids[real]] = VF.sampling_probs(logits[:, real], temperature, top_k, top_p)
        else:
            log_mass = self._log_masses(z, norm, union, logits, temperature)
            dense = self.dense_logits(flat) / temperature  # (N, V)
            cluster = self._cluster_of
            peak = torch.full_like(log_mass, float("-inf")).scatter_reduce(1, cluster.expand_as(dense), dense, "amax")
            within = dense - peak[:, cluster]
            within = within - torch.log(torch.zeros_like(log_mass).index_add_(1, cluster, within.exp()))[:, cluster]
            out = torch.exp(torch.log_softmax(log_mass, dim=-1)[:, cluster] + within)
        return out.reshape(*h.shape[:-1], self.vocab_size)

    def _log_masses(self, z, norm, union, logits, temperature) -> torch.Tensor:
        """log m_k, (N, K): exact for the probed clusters, estimated for the others."""
        log_mass = self._estimate(z, norm, temperature)
        exact = (logits / temperature).view(logits.shape[0], union.numel(), self.width).logsumexp(-1)
        return log_mass.index_copy(1, union, exact)

    def proposal(self, h, temperature: float = 1.0, top_k=None, top_p=None, probes: int | None = None) -> torch.Tensor:
        """The draft distribution of ``sample(exact=True)`` and of verified decoding, (..., V):
        ``functional.sampling_probs`` of the approximate logits ``forward(h)`` (temperature, top-k,
        top-p). It reads the centroids and the probed clusters only."""
        return VF.sampling_probs(self(h, probes), temperature, top_k, top_p)

    @torch.no_grad()
    def sample(
        self, h, temperature: float = 1.0, top_k=None, top_p=None, generator=None, probes=None, exact: bool = False
    ) -> torch.Tensor:
        """A draw from ``sampling_probs``: a cluster by its (exact or estimated) mass, then a token by
        the exact softmax inside it, reading that cluster's rows if it was not probed.

        ``exact=True``: a draw from the dense model's ``functional.sampling_probs(h @ W.T, temperature,
        top_k, top_p)`` itself: a draft from ``proposal``, then one verification against the dense
        probabilities (``functional.speculative_sample``, exact for any proposal)."""
        check_sampling(temperature, top_k, top_p)
        check_hidden(h, self.d_model)
        flat = h.reshape(-1, self.d_model).float()
        if exact:
            filters = dict(temperature=temperature, top_k=top_k, top_p=top_p)
            drafts, q = draft_sample(self, flat, filters, probes, generator)
            return accept(dense_probs(self, flat, filters), q, drafts, generator)[0].reshape(h.shape[:-1])
        z, norm, union, ids, logits = self._probe(flat, self._check_probes(probes))
        if top_k is not None or top_p is not None:
            real = ids < self.vocab_size
            pick = VF.sample_logits(logits[:, real], temperature, top_k, top_p, generator)
            return ids[real][pick].reshape(h.shape[:-1])
        cluster = torch.multinomial(
            torch.softmax(self._log_masses(z, norm, union, logits, temperature), dim=-1), 1, generator=generator
        ).squeeze(1)
        members = self.token_ids[cluster]  # (N, L)
        within = torch.einsum("nld,nd->nl", self.rows[cluster].float(), flat).masked_fill(
            members == self.vocab_size, float("-inf")
        )
        pick = torch.multinomial(torch.softmax(within / temperature, dim=-1), 1, generator=generator)
        return members.gather(1, pick).squeeze(1).reshape(h.shape[:-1])

    def decode_cost(self, probes: int | None = None) -> dict:
        """One token, approximate greedy: the centroids and the probed clusters' rows (fp32).
        Exact greedy adds, for a row it cannot certify, the bf16 screen of all rows (2 V d bytes)."""
        P = self._check_probes(probes)
        K, L, d = self.clusters, self.width, self.d_model
        return {"flops": 2 * K * d + 2 * P * L * d, "bytes": 4 * K * d + 4 * P * L * d}

    def extra_repr(self) -> str:
        sizes = f"clusters={self.clusters}, rows_per_cluster={self.width}, probes={self.probes}"
        return f"d_model={self.d_model}, vocab_size={self.vocab_size}, {sizes}"
