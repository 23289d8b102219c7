"""Hidden states of a frozen backbone, kept on disk under a digest of its weights and its inputs:
every head evaluated or calibrated on one backbone and one set of tokens runs the backbone once."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.corpora import eval_windows
from ..files import load_plain, save_atomic


def digest(tensors) -> str:
    """A digest of the tensors' names, dtypes, shapes and bytes: equal digests, equal contents."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


@torch.no_grad()
def cached_hidden_states(backbone, inputs: list[torch.Tensor], cache: str | Path | None = None) -> list[torch.Tensor]:
    """``[backbone(input_ids=x).last_hidden_state for x in inputs]``, each (B, T, d) for x (B, T).

    With ``cache``, kept in ``cache/hidden/`` under a digest of the backbone's weights and the
    inputs (a changed weight or token misses)."""
    path = None
    if cache is not None:
        key = digest([*backbone.state_dict().items(), *(("x", x) for x in inputs)])
        path = Path(cache) / "hidden" / f"{key}.pt"
        if path.exists():
            return list(load_plain(path)["h"])
    hs = [backbone(input_ids=x).last_hidden_state for x in tqdm(inputs, desc="hidden states", leave=False)]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomic({"h": tuple(hs)}, path)
    return hs


@torch.no_grad()
def hidden_states(model, data, tokens: int, block: int = 256, batch: int = 4) -> torch.Tensor:
    """Final hidden states (n, d) of ``model`` on consecutive windows of ``data`` (token ids)."""
    out = []
    for w in tqdm(eval_windows(data, block, tokens, batch), desc="hidden states", leave=False):
        out.append(model.base_model(input_ids=w[:, :-1]).last_hidden_state.reshape(-1, model.config.hidden_size))
    return torch.cat(out).float()
