"""``model.generate(...)`` on a loaded vqlogits model: Hugging Face's call, decoded by
``hf.generate.generate``, so a user with HF habits gets the exact output by default.

``load_pretrained`` installs ``model_generate`` as the instance's ``generate``, as it installs
``save_pretrained``: the object it returns is the base architecture's own class (say
``Gemma3ForCausalLM``) with its output layer replaced, so an override on the instance is the one
extension point that reaches ``model.generate()`` and ``pipeline("text-generation")`` alike
without a custom class or remote code. An indexed model decodes verified: the original model's
greedy tokens, or samples from its distribution after temperature, top-k and top-p; a compressed
model decodes through its own compact head.

Honoured: ``input_ids`` (or ``inputs``), ``attention_mask`` with left padding (padded rows are
decoded one at a time, without their padding), ``generation_config`` and the keywords it holds:
``max_new_tokens`` / ``max_length``, ``min_new_tokens``, ``do_sample``, ``temperature``, ``top_k``,
``top_p``, ``eos_token_id``, ``pad_token_id``; ``streamer``, ``generator``. Anything else that
would change the output (beam search, penalties, other processors) raises a ``ValueError`` naming
it. ``approximate=True`` opts in to the approximate index (probed clusters only, not exact).
"""

from __future__ import annotations

import copy

import torch
from transformers import GenerationConfig

from .generate import generate

# GenerationConfig fields the decoding honours exactly, and those that change nothing it returns.
HONOURED = ("max_new_tokens", "max_length", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p")
HONOURED += ("eos_token_id", "pad_token_id")
HARMLESS = ("bos_token_id", "use_cache", "transformers_version", "_from_model_config", "cache_implementation")


def _config(model, generation_config, kwargs: dict) -> GenerationConfig:
    """The model's generation config, updated by ``generation_config`` and the keywords; refuses,
    by name, a keyword it does not know and a setting it cannot honour exactly."""
    # The priority HF's own generate applies: the call's, then the model's, then its global defaults.
    defaults = GenerationConfig._get_default_generation_params()
    config = copy.deepcopy(generation_config or GenerationConfig())
    config.update(**model.generation_config.to_dict(), defaults_only=True, allow_custom_entries=True)
    config.update(**defaults, defaults_only=True)
    unused = config.update(**kwargs)
    if unused:
        raise ValueError(f"model.generate: {', '.join(sorted(unused))} is not a generation argument vqlogits knows")
    for key, value in config.to_dict().items():
        default = defaults.get(key)
        unset = value == default or (not value and not default)  # None, False, 0 and {} all mean "off"
        if key not in HONOURED + HARMLESS and not unset:
            raise ValueError(
                f"model.generate: {key}={value!r} cannot be honoured by exact decoding; vqlogits honours"
                f" {', '.join(HONOURED)}"
            )
    return config


def _rows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor] | None:
    """Each row without its left padding, or None when no row is padded; right padding is refused."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    mask = attention_mask.bool()
    if bool((mask[:, 1:].int() < mask[:, :-1].int()).any()):
        raise ValueError("model.generate: attention_mask pads on the right; decoder-only models need left padding")
    return [row[m][None] for row, m in zip(input_ids, mask, strict=True)]


def model_generate(
    model,
    inputs: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    streamer=None,
    approximate: bool = False,
    generator: torch.Generator | None = None,
    **kwargs,
) -> torch.Tensor:
    """``model.generate(...)``, exact: see the module docstring. Returns (B, T + new) ids, as HF does."""
    input_ids = kwargs.pop("input_ids", inputs)
    attention_mask = kwargs.pop("attention_mask", None)
    if input_ids is None:
        raise ValueError("model.generate: input_ids is required (vqlogits decodes from token ids)")
    cfg = _config(model, generation_config, kwargs)
    T = input_ids.shape[1]
    new = cfg.max_new_tokens if cfg.max_new_tokens is not None else max(0, cfg.max_length - T)
    sampling = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p) if cfg.do_sample else {}
    options = dict(
        do_sample=bool(cfg.do_sample),
        generator=generator,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        min_new_tokens=cfg.min_new_tokens or 0,
        verify=False if approximate else None,
        **sampling,
    )
    if streamer is not None:
        streamer.put(input_ids.cpu())
        options["on_tokens"] = lambda ids: streamer.put(ids.cpu())
    rows = _rows(input_ids, attention_mask)
    if rows is None:
        out = generate(model, input_ids, new, **options)
    else:
        out = _padded(model, input_ids, rows, new, cfg.pad_token_id, options)
    if streamer is not None:
        streamer.end()
    return out


def _padded(model, input_ids, rows, new: int, pad_token_id, options: dict) -> torch.Tensor:
    """Left-padded rows decoded one at a time; each row's new tokens after its own padded prompt,
    a row that stopped early filled with ``pad_token_id``, as HF returns them."""
    outs = [generate(model, row, new, **options)[:, row.shape[1] :] for row in rows]
    width = max(o.shape[1] for o in outs)
    fill = pad_token_id if pad_token_id is not None else 0
    tails = [torch.nn.functional.pad(o, (0, width - o.shape[1]), value=fill) for o in outs]
    return torch.cat([input_ids, torch.cat(tails)], 1)
