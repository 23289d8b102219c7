"""The math of VQ-Logits as plain functions over tensors.

Notation: h (..., d) hidden states, C (K, d) codebook, M (V,) token -> code assignment,
b (V,) optional per-token bias. The full logits are ``logit[..., v] = (h @ C.T)[..., M[v]] + b[v]``.

Because every token of code k shares the code logit z_k, the softmax normaliser factorises:
``log Z = logsumexp_k(z_k + log sum_{v in k} exp(b_v))``. The loss therefore needs O(N*K) work
and memory instead of O(N*V).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import kernels
from ._checks import check_reduction


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype for reductions: fp32 for half types, else unchanged (fp32 or fp64)."""
    return torch.promote_types(dtype, torch.float32)


def code_logits(h: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Code logits, same as ``h @ codebook.T``: (..., d) x (K, d) -> (..., K)."""
    return F.linear(h, codebook)


def scatter_logits(z: torch.Tensor, assignment: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Full logits from code logits, same as ``z[..., assignment] + bias``: (..., K) -> (..., V).

    Without autograd on a GPU with Triton this is one fused pass (``kernels.scatter_logits_triton``);
    otherwise a gather and an in-place bias add (two passes over one V-sized buffer).
    """
    needs_grad = torch.is_grad_enabled() and (z.requires_grad or (bias is not None and bias.requires_grad))
    if not needs_grad and kernels.triton_usable(z) and z.is_cuda:
        out = kernels.scatter_logits_triton(z.reshape(-1, z.shape[-1]), assignment, bias)
        return out.reshape(*z.shape[:-1], assignment.numel())
    out = z.index_select(-1, assignment)  # (..., V)
    return out if bias is None else out.add_(bias)  # in place: one V-sized buffer, not two


def vq_logits(
    h: torch.Tensor, codebook: torch.Tensor, assignment: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The paper's VQ-Logits head: ``(h @ codebook.T)[..., assignment] + bias``, (..., V)."""
    return scatter_logits(code_logits(h, codebook), assignment, bias)


def log_code_mass(
    assignment: torch.Tensor, num_codes: int, bias: torch.Tensor | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``log sum_{v: M[v]=k} exp(b_v)`` for each code k, (K,), in at least fp32.

    Without a bias this is ``log(count_k)``. Empty codes give -inf. Differentiable in ``bias``;
    the gradient is the softmax of the bias inside each code. Computed in ``dtype`` (at least fp32).
    """
    dtype = torch.promote_types(dtype, torch.float32)
    if bias is None:
        return torch.bincount(assignment, minlength=num_codes).to(dtype).log()
    b = bias.to(torch.promote_types(bias.dtype, dtype))
    neg_inf = torch.full((num_codes,), float("-inf"), dtype=b.dtype, device=b.device)
    # Per-code max for stability; detached because it cancels in value and gradient.
    peak = neg_inf.scatter_reduce(0, assignment, b.detach(), "amax", include_self=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = torch.zeros_like(peak).index_add(0, assignment, torch.exp(b - peak[assignment]))
    nonempty = total > 0
    # Guard the log so that empty codes get a zero (not NaN) gradient.
    return torch.where(nonempty, peak + torch.log(torch.where(nonempty, total, torch.ones_like(total))), neg_inf)


def vq_cross_entropy(
    h: torch.Tensor,
    targets: torch.Tensor,
    codebook: torch.Tensor,
    assignment: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    fused: bool | None = None,
) -> torch.Tensor:
    """Cross-entropy of the VQ-Logits head without materialising (N, V).

    Same as ``F.cross_entropy(vq_logits(h, ...).flatten(0, -2), targets.flatten(), ...)``;
    reductions and ``ignore_index`` behave identically and NaNs propagate the same way.
    Works in at least fp32, so the result's dtype is fp32 for half inputs (as under autocast).
    Inputs are not validated here; ``VQLogitsHead.loss`` does that.

    ``fused``: use ``kernels.lse_and_target`` (Triton on the GPU, else chunked PyTorch; the backward
    recomputes the code logits, so memory is O(chunk x K)). Default: fused when Triton can run.
    """
    check_reduction(reduction)
    flat_t = targets.reshape(-1)  # (N,)
    valid = flat_t != ignore_index
    safe_t = torch.where(valid, flat_t, torch.zeros_like(flat_t))
    flat_h = h.reshape(-1, h.shape[-1])
    log_mass = log_code_mass(assignment, codebook.shape[0], bias, compute_dtype(flat_h.dtype))
    if fused or (fused is None and kernels.triton_usable(flat_h)):
        # Streamed over codes, (N, K) never stored; see vqlogits.kernels.
        log_z, target_logit = kernels.lse_and_target(flat_h, codebook, log_mass, assignment[safe_t])
    else:
        z = code_logits(flat_h, codebook)  # (N, K)
        z = z.to(compute_dtype(z.dtype))
        log_z = torch.logsumexp(z + log_mass.to(z.dtype), dim=-1)  # (N,)
        target_logit = z.gather(-1, assignment[safe_t].unsqueeze(-1)).squeeze(-1)  # (N,)
    if bias is not None:
        target_logit = target_logit + bias[safe_t].to(target_logit.dtype)
    # where, not multiply: an ignored row's NaN must not leak, as in F.cross_entropy.
    loss = torch.where(valid, log_z - target_logit, torch.zeros_like(log_z))
    return reduce_loss(loss, valid, reduction, targets.shape)


def vq_soft_cross_entropy(
    h: torch.Tensor,
    target_probs: torch.Tensor,
    codebook: torch.Tensor,
    assignment: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy against a distribution over tokens, per row, without the head's (N, V) logits.

    Same as ``-(target_probs * F.log_softmax(vq_logits(h, codebook, assignment, bias), -1)).sum(-1)``,
    (..., V) probabilities -> (...): with P(k) the target's mass on code k,
    ``sum_v p(v) log p_s(v) = sum_k P(k) z_k + p . b - log Z``. Each row of ``target_probs`` must sum
    to 1 (the identity needs it); it carries no gradient (a teacher's distribution, as in distillation).
    """
    flat_h = h.reshape(-1, h.shape[-1])
    z = code_logits(flat_h, codebook)
    z = z.to(compute_dtype(z.dtype))  # (N, K)
    log_z = torch.logsumexp(z + log_code_mass(assignment, codebook.shape[0], bias, z.dtype), dim=-1)  # (N,)
    p = target_probs.reshape(-1, assignment.numel()).to(z.dtype)  # (N, V)
    code_mass = torch.zeros_like(z).index_add_(1, assignment, p)  # (N, K)
    cross = (code_mass * z).sum(-1) - log_z + (0 if bias is None else p @ bias.to(z.dtype))
    return (-cross).reshape(target_probs.shape[:-1])


def reduce_loss(loss: torch.Tensor, valid: torch.Tensor, reduction: str, shape: torch.Size) -> torch.Tensor:
    """Reduce per-token losses as ``F.cross_entropy`` does (mean over non-ignored tokens)."""
    if reduction == "none":
        return loss.reshape(shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum().to(loss.dtype)


# --- Reference sampling on full logits (the naive path; DenseHead uses it, tests compare with it) ---


def filter_logits(scores: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Top-k then top-p filtering with tie-inclusive thresholds; removed entries become -inf.

    top-k keeps every token whose score is >= the k-th largest score. top-p keeps token v
    iff the probability mass of tokens with a strictly larger score is < top_p. Both are
    order-independent, so ties (common when tokens share a code) are kept or dropped together.
    """
    vocab = scores.shape[-1]
    if top_k is not None and top_k < vocab:
        kth = scores.topk(top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = torch.softmax(sorted_scores.to(compute_dtype(scores.dtype)), dim=-1).to(torch.float64)
        mass_before = probs.cumsum(-1) - probs  # mass of tokens sorted strictly earlier
        # The last sorted position whose earlier mass is < top_p fixes the score threshold.
        last = (mass_before < top_p).sum(-1, keepdim=True) - 1
        threshold = sorted_scores.gather(-1, last.clamp(min=0))
        scores = scores.masked_fill(scores < threshold, float("-inf"))
    return scores


def sample_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample from ``softmax(filter_logits(logits.float() / temperature, top_k, top_p))``: (..., V) -> (...)."""
    scores = filter_logits(logits.to(compute_dtype(logits.dtype)) / temperature, top_k, top_p)
    probs = torch.softmax(scores.reshape(-1, scores.shape[-1]), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).reshape(logits.shape[:-1])


def sampling_probs(logits: torch.Tensor, temperature: float = 1.0, top_k=None, top_p=None) -> torch.Tensor:
    """The exact distribution that ``sample_logits`` draws from, (..., V)."""
    scores = filter_logits(logits.to(compute_dtype(logits.dtype)) / temperature, top_k, top_p)
    return torch.softmax(scores, dim=-1)


def speculative_sample(
    p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact draws from ``p`` given ``drafts`` drawn from ``q``, both (n, V) rows of probabilities:
    (n,) tokens with the distribution of ``torch.multinomial(p, 1)``, and whether each draft was kept.

    The speculative sampling rule: keep draft x with probability min(1, p(x) / q(x)), else draw from
    the residual r = (p - q)+ / sum (p - q)+. Exact for any q, including one that is 0 where p is not:
    P(reject) = sum_y (q(y) - min(p(y), q(y))) = sum (p - q)+ (both sum to 1), so
    P(out = x) = min(p(x), q(x)) + sum (p - q)+ * r(x) = min(p(x), q(x)) + (p(x) - q(x))+ = p(x).
    A draft is never a token with q = 0 (it was drawn from q); a row with p = q is never rejected.
    """
    rows = torch.arange(drafts.numel(), device=drafts.device)
    p_x, q_x = p[rows, drafts], q[rows, drafts]
    kept = torch.rand(drafts.shape, generator=generator, device=drafts.device, dtype=p.dtype) * q_x <= p_x
    out = drafts.clone()
    rejected = torch.nonzero(~kept).squeeze(1)
    if rejected.numel():
        residual = (p[rejected] - q[rejected]).clamp_min(0)
        empty = residual.sum(-1) <= 0  # p == q up to rounding: the residual is p itself
        residual[empty] = p[rejected][empty]
        out[rejected] = torch.multinomial(residual, 1, generator=generator).squeeze(1)
    return out, kept
