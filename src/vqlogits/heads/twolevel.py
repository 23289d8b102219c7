"""Two-level head: P(code | h) times a context-dependent softmax over the tokens of that code."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as VF
from .._checks import check_assignment, check_dims, check_hidden, check_reduction, check_sampling, check_targets
from ..cluster import balanced_assignment, balanced_kmeans, code_means
from .rows import frequent_split, low_rank_offsets
from .sizes import codes


class TwoLevelHead(nn.Module):
    """``P(v | h) = softmax(h @ C.T)[M(v)] * softmax_{u: M(u) = M(v)}(E_u . (h @ Q) + b_u)[v]``.

    Unlike VQ-Logits, the ranking inside a code depends on the context through the small
    per-token vectors E (V, e) and the shared projection Q (d, e), so the head is not limited to
    I(Y; code | H). ``forward`` returns exact log-probabilities (..., V).

    Costs per token, L = largest code: loss and T=1 sampling O(K d + L e); greedy is exact by
    branch and bound (codes in order of probability until none left can win), typically
    O(K d + L e); sampling with temperature != 1 or top-k / top-p uses the full distribution.
    """

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        codebook_size: int,
        token_dim: int = 8,
        bias: bool = True,
        *,
        validate: bool = True,
    ):
        super().__init__()
        check_dims(d_model, vocab_size, codebook_size)
        if not isinstance(token_dim, int) or token_dim < 1:
            raise ValueError(f"token_dim must be an int >= 1, got {token_dim!r}")
        self.d_model, self.vocab_size, self.codebook_size, self.validate = d_model, vocab_size, codebook_size, validate
        self.codebook = nn.Parameter(torch.randn(codebook_size, d_model) * 0.02)
        self.proj = nn.Parameter(torch.randn(d_model, token_dim) * d_model**-0.5)
        self.token_vectors = nn.Parameter(torch.zeros(vocab_size, token_dim))  # starts uniform inside codes
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None
        self.register_buffer("assignment", balanced_assignment(vocab_size, codebook_size))
        self._layout_key = None

    # -- what the registry asks of a kind (heads/__init__.py) --------------------------------
    BUDGET_BIAS = True
    FREQUENT_ROWS = False
    ROW_OPTIONS = ("codebook_size", "token_dim", "head_budget")

    @classmethod
    def build(cls, d_model: int, vocab_size: int, sizes: dict) -> "TwoLevelHead":
        return cls(d_model, vocab_size, sizes["codebook_size"], sizes["token_dim"], bias=sizes["bias"])

    @staticmethod
    def budget(rest: int, vocab_size: int, d_model: int) -> tuple[dict, int]:
        """e = rest / (4 V) dims per token (at least 1), the rest codes."""
        V, d = vocab_size, d_model
        e = max(1, rest // (4 * V))
        K = codes(rest - e * (V + d), d, V)
        return {"token_dim": e, "codebook_size": K}, K * d + e * (V + d)

    def row_inputs(self, h: torch.Tensor) -> dict:
        """As ``VQLogitsHead.row_inputs``: codes and the projection meet h, token vectors meet h @ proj."""
        return {"codebook": h, "proj": h, "token_vectors": h @ self.proj.detach()}

    def config(self) -> dict:
        return {"bias": self.bias is not None, "codebook_size": self.codebook_size, "token_dim": self.proj.shape[1]}

    @classmethod
    def rows_sizes(cls, options: dict) -> dict:
        return {k: options[k] for k in ("codebook_size", "bias", "token_dim")}

    @classmethod
    @torch.no_grad()
    def from_rows(cls, dense: torch.Tensor, sizes: dict, frequent=None, seed: int = 0, progress: bool = True):
        """A head approximating ``dense`` (V, d): a balanced k-means of the rows (equal code sizes,
        because P(code | h) = softmax(h C^T) has no per-code size term), the codebook their
        centroids; E (V, e) and Q (d, e) the best rank-e least-squares fit of the rows' offsets from
        their centroids, R ~ E Q^T (truncated SVD), so e_v . (h Q) ~ h . (w_v - c_M(v)). Hybrids
        first give the ``n_frequent`` most frequent tokens (``frequent``) singleton codes of their
        exact rows (a singleton's token vector does not matter)."""
        dense = dense.float()
        V, d = dense.shape
        K, e, bias = sizes["codebook_size"], sizes["token_dim"], sizes.get("bias", True)
        n = sizes.get("n_frequent", 0) if cls.FREQUENT_ROWS else 0
        tail, assignment = frequent_split(V, n, frequent, f"a {cls.__name__}")
        rows = dense[tail]
        tail_codes = balanced_kmeans(rows, K, seed=seed, progress=progress)
        centroids = code_means(rows, tail_codes, K)
        E, Q = low_rank_offsets(rows, centroids, tail_codes, e)
        head = cls.with_frequent(d, V, n, K, e, bias)
        assignment[tail] = n + tail_codes
        head.codebook.copy_(torch.cat([dense[frequent[:n]], centroids]) if n else centroids)
        head.proj.copy_(Q)
        head.token_vectors.zero_()
        head.token_vectors[tail] = E
        head.set_assignment(assignment)
        return head

    @classmethod
    def with_frequent(cls, d_model, vocab_size, n_frequent, codebook_size, token_dim, bias):
        return cls(d_model, vocab_size, n_frequent + codebook_size, token_dim, bias=bias)

    def set_assignment(self, assignment: torch.Tensor) -> None:
        check_assignment(assignment, self.vocab_size, self.codebook_size)
        with torch.no_grad():
            self.assignment.copy_(assignment)

    def _layout(self):
        """Token ids of each code, padded: (K, L) ids and mask."""
        key = (self.assignment.data_ptr(), self.assignment._version)
        if key != self._layout_key:
            counts = torch.bincount(self.assignment, minlength=self.codebook_size)
            perm = torch.argsort(self.assignment, stable=True)
            first = torch.cumsum(counts, 0) - counts
            width = max(1, int(counts.max()))
            slot = torch.arange(width, device=perm.device)
            mask = slot < counts[:, None]  # (K, L)
            ids = perm[(first[:, None] + slot).clamp(max=self.vocab_size - 1)]
            self._members = (torch.where(mask, ids, 0), mask)
            self._empty = counts == 0
            self._layout_key = key
        return self._members

    def _inner(self, g: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Within-code logits ``E_t . g + b_t`` for token ids (N, ...) and g (N, e)."""
        s = torch.einsum("n...e,ne->n...", self.token_vectors[tokens], g)
        return s if self.bias is None else s + self.bias[tokens]

    def _code_members(self, g, codes):
        """Within-code log-probabilities of every member of ``codes`` (N, ...): ids, logp, mask."""
        ids, mask = self._layout()
        ids, mask = ids[codes], mask[codes]  # (N, ..., L)
        s = self._inner(g, ids).masked_fill(~mask, float("-inf"))
        within = (s - torch.logsumexp(s, dim=-1, keepdim=True)).masked_fill(
            ~mask, float("-inf")
        )  # no NaN for empty codes
        return ids, within, mask

    def _log_code(self, flat: torch.Tensor) -> torch.Tensor:
        """log P(code | h), (N, K); codes without tokens get probability 0."""
        self._layout()
        z = (flat @ self.codebook.T).masked_fill(self._empty, float("-inf"))
        return torch.log_softmax(z.to(VF.compute_dtype(z.dtype)), dim=-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Exact log P(v | h), (..., d) -> (..., V)."""
        check_hidden(h, self.d_model)
        flat = h.reshape(-1, self.d_model)
        log_code = self._log_code(flat)  # (N, K)
        s, lse = self.within_logits(flat)
        out = log_code[:, self.assignment] + s - lse[:, self.assignment]
        return out.reshape(*h.shape[:-1], self.vocab_size)

    def within_logits(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every token's within-code logit (N, V) and every code's log-normaliser (N, K), from (N, d).

        Computed token-major, (V, N), so the per-code reductions add whole rows; returns views."""
        s = self.token_vectors @ (flat @ self.proj).T  # (V, N)
        if self.bias is not None:
            s = s + self.bias[:, None]
        blank = s.new_zeros(self.codebook_size, s.shape[1])
        rows = self.assignment[:, None].expand_as(s)
        peak = torch.full_like(blank, float("-inf")).scatter_reduce(0, rows, s.detach(), "amax")
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
        total = blank.index_add(0, self.assignment, torch.exp(s - peak[self.assignment]))
        return s.T, (peak + torch.log(total.clamp_min(torch.finfo(total.dtype).tiny))).T  # (N, V), (N, K)

    def loss(self, h, targets, ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
        """Same as ``F.nll_loss(self(h).flatten(0, -2), targets.flatten())``, in O(N (K d + L e))."""
        check_hidden(h, self.d_model)
        check_targets(targets, h, self.vocab_size, ignore_index, self.validate)
        check_reduction(reduction)
        flat, t = h.reshape(-1, self.d_model), targets.reshape(-1)
        valid = t != ignore_index
        t = torch.where(valid, t, torch.zeros_like(t))
        log_code = self._log_code(flat)  # (N, K)
        code = self.assignment[t]
        g = flat @ self.proj  # (N, e)
        _, within, _ = self._code_members(g, code)  # (N, L), log-softmax over the target's code
        ids, mask = self._layout()
        slot = (ids[code] == t[:, None]) & mask[code]  # where the target sits in its code
        target_within = within.masked_fill(~slot, 0).sum(-1)
        loss = -log_code.gather(-1, code[:, None]).squeeze(-1) - target_within
        return VF.reduce_loss(torch.where(valid, loss, torch.zeros_like(loss)), valid, reduction, targets.shape)

    def loss_flops(self, targets: torch.Tensor) -> int:
        """Matmul FLOPs of ``loss`` forward + backward: code logits ``h C^T`` (K d), ``g = h Q``
        (d e) and the target code's within-code logits, padded to the largest code (L e), each x 3."""
        K, d, e = self.codebook_size, self.d_model, self.proj.shape[1]
        L = self._layout()[0].shape[1]
        return 6 * targets.numel() * (K * d + d * e + L * e)

    def decode_cost(self) -> dict:
        """One token, T=1 sampling or one round of greedy: code logits + one code's tokens."""
        K, d, e = self.codebook_size, self.d_model, self.proj.shape[1]
        L = int(torch.bincount(self.assignment, minlength=K).max())
        return {"flops": 2 * K * d + 2 * d * e + 2 * L * e, "bytes": 4 * K * d + 4 * d * e + L * (4 * e + 12)}

    @torch.no_grad()
    def greedy(self, h: torch.Tensor) -> torch.Tensor:
        """argmax_v log P(v | h), exactly: visit codes by probability until no unvisited code can win
        (a token's probability is at most its code's)."""
        check_hidden(h, self.d_model)
        flat = h.reshape(-1, self.d_model)
        log_code = self._log_code(flat)  # (N, K)
        order = torch.argsort(log_code, dim=-1, descending=True)
        g = flat @ self.proj
        m = 1
        while True:
            codes = order[:, :m]  # (N, m)
            ids, within, _ = self._code_members(g, codes)  # (N, m, L)
            joint = (log_code.gather(1, codes)[..., None] + within).flatten(1)  # (N, m*L)
            best, where = joint.max(-1)
            bound = (
                log_code.gather(1, order[:, m : m + 1]).squeeze(-1)
                if m < self.codebook_size
                else torch.full_like(best, float("-inf"))
            )
            if m >= self.codebook_size or bool((best >= bound).all()):
                return ids.flatten(1).gather(1, where[:, None]).squeeze(-1).reshape(h.shape[:-1])
            m = min(2 * m, self.codebook_size)

    @torch.no_grad()
    def sample(self, h, temperature: float = 1.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
        """Exact samples of softmax(forward(h) / T) after top-k / top-p; T=1 unfiltered draws a code
        then a token inside it (O(K d + L e)), anything else uses the full distribution."""
        check_sampling(temperature, top_k, top_p)
        if temperature != 1.0 or top_k is not None or top_p is not None:
            return VF.sample_logits(self(h), temperature, top_k, top_p, generator)
        check_hidden(h, self.d_model)
        flat = h.reshape(-1, self.d_model)
        code = torch.multinomial(self._log_code(flat).exp(), 1, generator=generator).squeeze(-1)
        ids, within, _ = self._code_members(flat @ self.proj, code)
        pick = torch.multinomial(within.exp(), 1, generator=generator)
        return ids.gather(1, pick).squeeze(-1).reshape(h.shape[:-1])

    @torch.no_grad()
    def sampling_probs(self, h, temperature: float = 1.0, top_k=None, top_p=None) -> torch.Tensor:
        check_sampling(temperature, top_k, top_p)
        return VF.sampling_probs(self(h), temperature, top_k, top_p)
