import itertools

import torch

import vqlogits.cluster as km
from vqlogits import kmeans


def _blobs(n=600, d=5, k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 4
    return centers[torch.randint(0, k, (n,), generator=g)] + torch.randn(n, d, generator=g)


def _inertia(x, centroids, labels):
    return float(((x - centroids[labels]) ** 2).sum())


def test_objective_never_increases_and_matches_assignment():
    x = _blobs()
    res = kmeans(x, 8, iters=30, seed=0)
    assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(res.inertia)), res.inertia
    assert res.inertia[-1] < res.inertia[0] or len(res.inertia) <= 2
    assert abs(_inertia(x, res.centroids, res.assignment) - res.inertia[-1]) <= 1e-4 * res.inertia[-1]
    # every point sits with its nearest centroid
    assert torch.equal(torch.cdist(x, res.centroids).argmin(-1), res.assignment)


def test_reproducible_per_seed():
    x = _blobs()
    a, b, c = kmeans(x, 8, seed=1), kmeans(x, 8, seed=1), kmeans(x, 8, seed=2)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.assignment, b.assignment)
    assert not torch.equal(a.centroids, c.centroids)


def test_empty_clusters_are_reseeded(monkeypatch):
    x = _blobs()
    # Force a bad start: all centroids at one far-away point, so all but one cluster start empty.
    monkeypatch.setattr(km, "_kmeans_pp", lambda x, x_sq, k, g: torch.full((k, x.shape[1]), 100.0))
    res = kmeans(x, 6, iters=50)
    assert torch.bincount(res.assignment, minlength=6).min() > 0
    assert res.inertia[-1] < 0.1 * res.inertia[0]


def test_chunked_distances_give_the_same_answer():
    x = _blobs(n=500)
    full = kmeans(x, 7, seed=3)
    chunked = kmeans(x, 7, seed=3, max_chunk_elems=7 * 13)  # 13 rows per chunk
    assert torch.equal(full.assignment, chunked.assignment)


def test_kmeans_pp_on_a_subset_and_duplicate_points():
    x = _blobs(n=3000)
    res = kmeans(x, 16, init_size=100, iters=5)
    assert res.centroids.shape == (16, 5) and res.assignment.shape == (3000,)
    dup = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat(10, 1)  # 2 distinct points, k = 4
    res = kmeans(dup, 4)
    assert res.inertia[-1] == 0.0
