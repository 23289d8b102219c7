"""k-means in plain PyTorch (CPU or GPU) with bounded memory, for building codebooks."""

from __future__ import annotations

from typing import NamedTuple

import torch
from tqdm.auto import tqdm


class KMeansResult(NamedTuple):
    centroids: torch.Tensor  # (k, d), fp32 or fp64
    assignment: torch.Tensor  # (n,) long, index of the nearest centroid
    inertia: list[float]  # sum of squared distances after each assignment step


def _nearest(x, x_sq, centroids, chunk_rows):
    """Nearest centroid and squared distance for every row of x, chunked to bound memory."""
    c_sq = (centroids * centroids).sum(-1)  # (k,)
    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    dist = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        d2 = torch.addmm(c_sq, x[rows], centroids.T, alpha=-2.0)  # (chunk, k), ||c||^2 - 2 x.c
        best = d2.min(dim=-1)
        labels[rows] = best.indices
        dist[rows] = (best.values + x_sq[rows]).clamp_min(0)
    return labels, dist


def _kmeans_pp(x, x_sq, k, generator):
    """k-means++ seeding: each new centre is drawn with probability proportional to D(x)^2."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator, device=x.device))
    chosen = [first]
    d2 = (x_sq - 2 * (x @ x[first]) + x_sq[first]).clamp_min(0)  # (n,)
    for _ in range(1, k):
        if float(d2.sum()) > 0:
            nxt = int(torch.multinomial(d2, 1, generator=generator))
        else:  # fewer distinct points than k: any point will do
            nxt = int(torch.randint(n, (1,), generator=generator, device=x.device))
        chosen.append(nxt)
        d2 = torch.minimum(d2, (x_sq - 2 * (x @ x[nxt]) + x_sq[nxt]).clamp_min(0))
    return x[chosen].clone()


def kmeans(
    x: torch.Tensor,
    k: int,
    iters: int = 25,
    seed: int = 0,
    init_size: int | None = None,
    max_chunk_elems: int = 1 << 24,
    progress: bool = False,
) -> KMeansResult:
    """Lloyd's k-means with k-means++ seeding; deterministic for a given seed on a given device.

    Args:
        x: (n, d) points. Half types are computed in fp32.
        k: number of clusters, 1 <= k <= n.
        iters: maximum Lloyd iterations (stops early when no point changes cluster).
        init_size: k-means++ runs on a random subset of this many points (default
            ``max(8 * k, 4096)``), because its k sequential passes over all n points dominate
            the run time for large k; Lloyd's iterations always use every point.
        max_chunk_elems: bound on the (rows x k) distance block, so memory stays O(n*d + k*d).

    Empty clusters are re-seeded with the points farthest from their centroids, so the
    objective never increases.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (n, d), got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, n={n}], got {k!r}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters!r}")
    x = x.detach().to(torch.promote_types(x.dtype, torch.float32))
    generator = torch.Generator(device=x.device).manual_seed(seed)
    x_sq = (x * x).sum(-1)  # (n,)
    chunk_rows = max(1, max_chunk_elems // k)

    init_size = max(8 * k, 4096) if init_size is None else max(k, init_size)
    if init_size < n:
        subset = torch.randperm(n, generator=generator, device=x.device)[:init_size]
        centroids = _kmeans_pp(x[subset], x_sq[subset], k, generator)
    else:
        centroids = _kmeans_pp(x, x_sq, k, generator)

    inertia: list[float] = []
    labels = None
    for _ in tqdm(range(iters), desc="k-means", disable=not progress, leave=False):
        new_labels, dist = _nearest(x, x_sq, centroids, chunk_rows)
        inertia.append(float(dist.sum()))
        if labels is not None and torch.equal(new_labels, labels):
            labels = new_labels
            break
        labels = new_labels
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        nonempty = counts > 0
        centroids = torch.where(nonempty[:, None], sums / counts.clamp_min(1)[:, None].to(x.dtype), centroids)
        empty = torch.nonzero(~nonempty).flatten()
        if empty.numel():
            # Farthest points become the new centres; they are no closer to any other centroid.
            far = torch.topk(dist, min(empty.numel(), n)).indices
            centroids[empty[: far.numel()]] = x[far]
    else:
        labels, dist = _nearest(x, x_sq, centroids, chunk_rows)
        inertia.append(float(dist.sum()))
    return KMeansResult(centroids, labels, inertia)


def balanced_assignment(vocab_size: int, codebook_size: int, order: torch.Tensor | None = None) -> torch.Tensor:
    """Deal tokens to codes round-robin in the given order (default: by id): code sizes differ by <= 1."""
    order = torch.arange(vocab_size) if order is None else order
    assignment = torch.empty(vocab_size, dtype=torch.long, device=order.device)
    assignment[order] = torch.arange(vocab_size, device=order.device) % codebook_size
    return assignment


def code_means(weight: torch.Tensor, assignment: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Mean of the rows of each code, (K, d): the least-squares codebook for a fixed map."""
    w = weight.detach().float()
    sums = torch.zeros(codebook_size, w.shape[1], device=w.device).index_add_(0, assignment, w)
    counts = torch.bincount(assignment, minlength=codebook_size).clamp_min(1)
    return sums / counts[:, None]


def balanced_assignment_to(
    x: torch.Tensor, centroids: torch.Tensor, capacity: int, candidates: int = 16, max_chunk_elems: int = 1 << 24
) -> torch.Tensor:
    """Each row of x to a centroid, at most ``capacity`` rows per centroid, greedily: rows that
    would lose most by missing their nearest centroid choose first, each taking its nearest
    centroid among its ``candidates`` nearest with room left; the few left over take the nearest
    free places. Deterministic. (n,) long."""
    n, k = x.shape[0], centroids.shape[0]
    if capacity * k < n:
        raise ValueError(f"capacity={capacity} x {k} centroids cannot hold {n} rows")
    c_sq = (centroids * centroids).sum(-1)
    m = min(candidates, k)
    near, near_d = [], []
    for start in range(0, n, max(1, max_chunk_elems // k)):
        d2 = torch.addmm(c_sq, x[start : start + max(1, max_chunk_elems // k)], centroids.T, alpha=-2.0)
        best = d2.topk(m, largest=False)  # sorted, nearest first
        near.append(best.indices)
        near_d.append(best.values)
    near, near_d = torch.cat(near), torch.cat(near_d)
    regret = near_d[:, 1] - near_d[:, 0] if m > 1 else -near_d[:, 0]
    order = torch.argsort(regret, descending=True, stable=True).tolist()
    room = [capacity] * k
    out = [-1] * n
    left = []
    choices = near.tolist()
    for row in order:
        for c in choices[row]:
            if room[c]:
                room[c] -= 1
                out[row] = c
                break
        else:
            left.append(row)
    if left:  # the nearest centroid with room left, in the same order, a chunk of rows at a time
        room_t = torch.tensor(room)
        open_ = torch.nonzero(room_t).squeeze(1)  # (k_open,): centroids with room
        step = max(1, max_chunk_elems // open_.numel())
        for start in range(0, len(left), step):
            rows = left[start : start + step]
            d2 = c_sq[open_][None, :] - 2 * x[torch.tensor(rows)] @ centroids[open_].T  # (chunk, k_open)
            for i, row in enumerate(rows):
                j = int(d2[i].masked_fill(room_t[open_] == 0, float("inf")).argmin())
                room_t[open_[j]] -= 1
                out[row] = int(open_[j])
    return torch.tensor(out, dtype=torch.long)


def balanced_kmeans(
    x: torch.Tensor,
    k: int,
    iters: int = 8,
    seed: int = 0,
    metric: torch.Tensor | None = None,
    spherical: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """k-means whose clusters hold at most ceil(n / k) rows each (equal sizes when k divides n).

    ``metric`` (d, d) M clusters in the metric (x - c)^T M M^T (x - c), i.e. plain k-means of x @ M;
    ``spherical`` clusters the directions x / |x|. Starts from ``kmeans`` (5 Lloyd iterations), then
    alternates ``balanced_assignment_to`` and centroid updates. Returns the (n,) assignment."""
    z = x.detach().float()
    if metric is not None:
        z = z @ metric.float()
    if spherical:
        z = torch.nn.functional.normalize(z, dim=-1)
    capacity = -(-z.shape[0] // k)
    centroids = kmeans(z, k, iters=5, seed=seed).centroids
    assignment = None
    for _ in tqdm(range(iters), desc="balanced k-means", disable=not progress, leave=False):
        if spherical:
            centroids = torch.nn.functional.normalize(centroids, dim=-1)
        new = balanced_assignment_to(z, centroids, capacity)
        if assignment is not None and torch.equal(new, assignment):
            break
        assignment = new
        counts = torch.bincount(assignment, minlength=k).clamp_min(1)
        centroids = torch.zeros_like(centroids).index_add_(0, assignment, z) / counts[:, None]
    return assignment
