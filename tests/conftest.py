import os

import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def make_vq(V=1000, K=7, d=33, bias=True, dtype=torch.float64, seed=0, assignment=None, scale=1.0):
    """A VQ head with random codebook, random map (some codes may be empty) and random bias."""
    from vqlogits import VQLogitsHead

    g = torch.Generator().manual_seed(seed)
    head = VQLogitsHead(d, V, K, bias=bias).to(dtype)
    with torch.no_grad():
        head.codebook.copy_(torch.randn(K, d, generator=g, dtype=dtype) * scale)
        if bias:
            head.bias.copy_(torch.randn(V, generator=g, dtype=dtype))
    head.set_assignment(torch.randint(0, K, (V,), generator=g) if assignment is None else assignment)
    return head
