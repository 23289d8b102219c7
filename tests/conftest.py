import os
import traceback
import warnings
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
SRC = str(Path(__file__).resolve().parents[1] / "src" / "vqlogits")


@pytest.fixture(autouse=True)
def deprecations_from_our_calls_fail():
    """A FutureWarning or DeprecationWarning raised while vqlogits code is on the stack fails the
    test, wherever the library attributes it (transformers' point at torch's module code): such a
    call breaks on a later release."""
    caught = []
    shown = warnings.showwarning

    def check(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (FutureWarning, DeprecationWarning)):
            ours = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(SRC)]
            if ours:
                caught.append(f"{category.__name__}: {message} (from {ours[-1].filename}:{ours[-1].lineno})")
        return shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", FutureWarning)
        warnings.simplefilter("always", DeprecationWarning)
        warnings.showwarning = check
        yield
    assert not caught, caught


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


@pytest.fixture
def json_never_in_place(monkeypatch):
    """Fails the test if the code writes a .json file in place: a kill mid-write would leave half a
    results.json that marks a run finished, or a vqlogits.json that no longer loads."""
    write_text = Path.write_text

    def checked(self, *a, **k):
        assert self.suffix != ".json", f"{self.name} written in place"
        return write_text(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", checked)


class Crash(Exception):
    pass


def train_until_crash(cfg, step: int) -> None:
    """Run ``train(cfg)`` and kill it when it asks for the batch of ``step`` (a crash mid-run)."""
    import pytest

    from vqlogits.lm import train as train_mod

    real = train_mod.get_batch

    def crashing(data, at, *a, **k):
        if at == step:
            raise Crash
        return real(data, at, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "get_batch", crashing)
        with pytest.raises(Crash):
            train_mod.train(cfg, progress=False)


class Largest:
    """Context manager: the largest tensor any op produces while it is active (a dispatch-mode probe)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        probe = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (tuple, list)) else [out]:
                    if isinstance(t, torch.Tensor):
                        probe.largest = max(probe.largest, t.numel())
                return out

        self.largest, self._mode = 0, Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Upper-tail p-value of Pearson's chi-square test of ``counts`` against ``probs``; cells whose
    expected count is below ``min_expected`` are pooled into one."""
    counts, probs = counts.double(), probs.double()
    expected = counts.sum() * probs
    big = expected >= min_expected
    obs, exp = counts[big], expected[big]
    if float(expected[~big].sum()) > 0:
        obs, exp = torch.cat([obs, counts[~big].sum()[None]]), torch.cat([exp, expected[~big].sum()[None]])
    elif float(counts[~big].sum()) > 0:
        return 0.0  # draws where the distribution has no mass
    stat = ((obs - exp) ** 2 / exp).sum()
    return float(torch.special.gammaincc(torch.tensor((obs.numel() - 1) / 2, dtype=torch.float64), stat / 2))
