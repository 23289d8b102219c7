"""Hugging Face training with a vqlogits head: ``model(input_ids, labels=labels).loss`` without (N, V).

A Hugging Face causal LM computes every position's (V,) logits before its loss. ``patch`` makes a
model whose output layer is a vqlogits head compute the loss through ``head.loss`` instead, from
the hidden states: same value as HF's loss on the full logits (shifted labels, ``-100`` ignored,
``num_items_in_batch`` honoured as ``Trainer`` passes it), O(K) memory per token for a VQ head.
``outputs.logits`` is then None, unless ``logits_to_keep`` > 0 asks for the last positions' logits.
Without labels (generation) the model's own forward runs unchanged.
"""

from __future__ import annotations

from . import _quiet  # noqa: F401  (first: torchao's import lines silenced before transformers imports it)

# isort: split

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from .load import vqlogits_head

IGNORE_INDEX = -100


def patch(model):
    """Route ``model``'s training loss through its vqlogits head; returns ``model`` (patched once).

    Same as HF's ``ForCausalLMLoss`` on ``lm_head(hidden_states)``: mean over the non-ignored
    shifted labels, or their sum over ``num_items_in_batch`` when given. Works under ``Trainer``
    and ``accelerate`` (it replaces the instance's ``forward``)."""
    head = vqlogits_head(model, "loss", "greedy")
    if getattr(model, "_vqlogits_patched", False):
        return model
    original = model.forward

    def forward(
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        **kwargs,
    ):
        # HF's own signature; other keywords pass through under the caller's names.
        shift_labels = kwargs.pop("shift_labels", None)
        num_items = kwargs.pop("num_items_in_batch", None)
        given = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        if labels is None and shift_labels is None:
            return original(**given, logits_to_keep=logits_to_keep)
        out = model.base_model(**given)
        h = out.last_hidden_state  # (B, T, d)
        if shift_labels is None:  # position t predicts labels[t + 1]; the last position predicts nothing
            shift_labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        if num_items is None:
            loss = head.loss(h, shift_labels.to(h.device), ignore_index=IGNORE_INDEX)
        else:
            loss = head.loss(h, shift_labels.to(h.device), ignore_index=IGNORE_INDEX, reduction="sum") / num_items
        logits = None
        if isinstance(logits_to_keep, torch.Tensor) or logits_to_keep:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = head(h[:, keep])
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )

    model.forward = forward
    model._vqlogits_patched = True
    return model
