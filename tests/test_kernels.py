"""The fused loss (kernels.lse_and_target) equals the composite PyTorch path; Triton via its CPU interpreter."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import make_vq
from vqlogits import functional as VF
from vqlogits import kernels

HANG_GUARD_S = 3600  # stops a hung subprocess; not a measurement (a loaded machine is slow, not wrong)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["random", "empty_codes"])
def test_fused_torch_path_matches_composite(bias, layout, monkeypatch):
    monkeypatch.setattr(kernels, "CHUNK_ROWS", 7)  # several chunks, the last one partial
    assignment = None if layout == "random" else torch.arange(1000) % 3
    head = make_vq(bias=bias, assignment=assignment)
    h = torch.randn(30, 33, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 1000, (30,))
    y[4] = -100
    params = [h, head.codebook] + ([head.bias] if bias else [])
    out = {}
    for fused in (False, True):
        loss = VF.vq_cross_entropy(h, y, head.codebook, head.assignment, head.bias, fused=fused)
        out[fused] = (loss, torch.autograd.grad(loss, params))
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-13, atol=1e-13)
    for a, b in zip(out[True][1], out[False][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


INTERPRETED = textwrap.dedent(
    """
    import torch
    from vqlogits import VQLogitsHead, kernels
    from vqlogits import functional as VF
    assert kernels.triton_usable(torch.zeros(1))
    torch.manual_seed(0)
    for N, K, d, bias in [(37, 50, 33, True), (64, 130, 16, False), (5, 7, 70, True)]:
        head = VQLogitsHead(d, 300, K, bias=bias)
        with torch.no_grad():
            head.codebook.normal_()
            if bias:
                head.bias.normal_()
        head.set_assignment(torch.randint(0, K // 2 + 1, (300,)))  # upper codes empty
        h = torch.randn(N, d, requires_grad=True)
        y = torch.randint(0, 300, (N,))
        params = [h, head.codebook] + ([head.bias] if bias else [])
        ref = VF.vq_cross_entropy(h, y, head.codebook, head.assignment, head.bias, fused=False)
        ref_g = torch.autograd.grad(ref, params)
        lse, zt = kernels.lse_and_target(h, head.codebook, head.log_code_mass(), head.assignment[y], use_triton=True)
        fused = VF.vq_cross_entropy(h, y, head.codebook, head.assignment, head.bias, fused=True)
        fused_g = torch.autograd.grad(fused, params)
        torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
        for a, b in zip(fused_g, ref_g):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for bias in (True, False):
        z = torch.randn(5, 13)
        M = torch.randint(0, 13, (2500,))
        b = torch.randn(2500) if bias else None
        got = kernels.scatter_logits_triton(z, M, b)
        assert torch.equal(got, z[:, M] + (b if bias else 0)), "scatter kernel"
        zb = z.bfloat16()
        ref = zb.index_select(1, M)
        if bias:
            ref.add_(b)  # fp32 bias into bf16 logits: one rounding
        assert torch.equal(kernels.scatter_logits_triton(zb, M, b), ref), "scatter kernel, bf16"
    print("triton-interpreter-ok")
    """
)


def test_triton_kernel_under_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run(
        [sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert run.returncode == 0 and "triton-interpreter-ok" in run.stdout, run.stderr[-3000:]


def test_use_triton_without_triton_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(kernels, "HAS_TRITON", False)
    with pytest.raises(ValueError, match="Triton is not installed"):
        kernels.lse_and_target(
            torch.randn(2, 3), torch.randn(4, 3), torch.zeros(4), torch.zeros(2, dtype=torch.long), use_triton=True
        )
