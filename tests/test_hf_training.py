"""Hugging Face training with a vqlogits head: HF's loss value, from the head's own loss, under
``Trainer``, with no tensor of N x V elements."""

import pytest
import torch
import torch.nn.functional as F

from conftest import Largest
from vqlogits import load_pretrained
from vqlogits.hf.compress import compress
from vqlogits.hf.training import patch


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from test_hf import _tiny

    folder = tmp_path_factory.mktemp("src")
    _tiny("llama", 300).save_pretrained(folder)
    return load_pretrained(compress(model=str(folder), codebook_size=16, out=folder / "vq"))


def _naive(model, ids, labels):
    h = model.base_model(input_ids=ids).last_hidden_state
    logits = model.get_output_embeddings()(h)  # (B, T, V)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def test_loss_equals_hf_loss_on_full_logits(model):
    ids = torch.randint(0, 300, (3, 20))
    labels = ids.clone()
    labels[0, :5] = -100  # a prompt that is not trained on
    out = model(input_ids=ids, labels=labels)
    torch.testing.assert_close(out.loss, _naive(model, ids, labels))
    assert out.logits is None
    n = int((labels[:, 1:] != -100).sum())
    summed = model(input_ids=ids, labels=labels, num_items_in_batch=2 * n).loss
    torch.testing.assert_close(summed, _naive(model, ids, labels) / 2)  # Trainer's gradient-accumulation form
    kept = model(input_ids=ids, labels=labels, logits_to_keep=2)
    assert kept.logits.shape == (3, 2, 300)
    torch.testing.assert_close(kept.logits, model(input_ids=ids).logits[:, -2:])
    assert patch(model) is model  # patched once


def test_trainer_never_builds_vocab_sized_logits(model, tmp_path):
    from transformers import Trainer, TrainingArguments

    B, T, V = 4, 64, 300
    ids = torch.randint(0, V, (T,))
    data = [{"input_ids": ids, "labels": ids} for _ in range(16)]  # every batch the same
    with torch.no_grad():
        expected = float(_naive(model, ids[None].expand(B, -1), ids[None].expand(B, -1)))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=B,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    with Largest() as probe:
        trainer.train()
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 3 and logged[0] == pytest.approx(expected, rel=1e-4)
    assert logged[-1] < logged[0]  # it trained
    assert probe.largest < B * T * V, probe.largest
    with Largest() as control:  # the probe sees HF's own path build (N, V)
        model.get_output_embeddings()(model.base_model(input_ids=ids[None].expand(B, -1)).last_hidden_state)
    assert control.largest >= B * T * V


def test_patch_refuses_a_model_without_a_vqlogits_head():
    from test_hf import _tiny

    with pytest.raises(ValueError, match="output layer is Linear, not a vqlogits head"):
        patch(_tiny("llama", 300))
