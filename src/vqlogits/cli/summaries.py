"""The few lines ``compress``, ``accelerate``, ``calibrate`` and ``eval`` end with (``--json``: the dict
itself)."""

from __future__ import annotations

SIZE_KEYS = ("codebook_size", "n_frequent", "token_dim", "clusters", "probes")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def folder_summary(info: dict) -> str:
    """What a model folder holds (``hf.folder.describe``): the head, its parameters and its bytes as
    stored, each beside the dense head's, where the teacher is, and the files."""
    sizes = ", ".join(f"{k.replace('_', ' ')} {info[k]:,}" for k in SIZE_KEYS if k in info)
    teacher = info["teacher"] or "none (the head holds the original rows)"
    return "\n".join(
        [
            f"{info['folder']}: {info['head']} head ({sizes}); V = {info['vocab_size']:,}, d = {info['d_model']},"
            f" weights in {info['dtype']}",
            f"  head parameters: {info['head_params']:,}, {info['head_param_share']:.1%} of the dense head's"
            f" {info['dense_head_params']:,}",
            f"  head bytes as stored: {_mb(info['head_bytes'])}, {info['head_byte_share']:.1%} of the dense head's"
            f" {_mb(info['dense_head_bytes'])} in fp32",
            f"  teacher (the original head, for calibrate and eval): {teacher}",
            "  files: " + ", ".join(f"{name} {_mb(size)}" for name, size in info["file_bytes"].items()),
        ]
    )


def calibration_summary(folder: str, summary: dict) -> str:
    """What ``calibrate`` did: each stage's steps, seconds and last loss, and its rows' learning rates."""
    lines = [f"{folder}: calibrated and saved"]
    for name, stage in summary["stages"].items():
        loss = "–" if stage["final_loss"] is None else f"{stage['final_loss']:.4f}"
        rates = ", ".join(f"{k} {v:.2g}" for k, v in (stage.get("row_lr") or {}).items())
        rows = f"; rows learned at {rates} (--row-step / mean L1 norm of what they meet)" if rates else ""
        lines.append(f"  stage {name}: {stage['steps']:,} steps in {stage['seconds']:,.0f} s, last loss {loss}{rows}")
    return "\n".join(lines)


def _decode(r: dict) -> str:
    setup = r["decode_setup"]
    lo, hi = r["decode_speedup_range"]
    return (
        f"  decoding end to end (vqlogits generate's path, batch {setup['batch']}, {setup['new']} new tokens,"
        f" {setup['repeats']} repeats in turns with the dense head): {r['decode_tok_s']:.1f} against"
        f" {r['dense_decode_tok_s']:.1f} tokens/s, x{r['decode_speedup']:.2f} (range {lo:.2f}-{hi:.2f})"
    )


def _compressed(r: dict) -> list[str]:
    interval = r["ppl_ratio_interval95"]
    spread = f"95% interval {interval[0]:.4f}-{interval[1]:.4f}" if interval else "no interval"
    bpb = (
        f"  bits per byte: original {r['bpb_original']:.4f}, compressed {r['bpb_compressed']:.4f}"
        f" ({r['eval_bytes']:,} bytes of text)"
        if r.get("bpb_original") is not None
        else "  bits per byte: none (the tokenizer's tokens are not strings of the text)"
    )
    return [
        f"{r['folder']}: {r['head']} head on {r['corpus']} {r['split']}, {r['eval_tokens']:,} tokens",
        f"  perplexity: original {r['ppl_original']:.3f}, compressed {r['ppl_compressed']:.3f},"
        f" x{r['ppl_compressed'] / r['ppl_original']:.4f} ({spread} over {len(r['window_gaps'])} windows)",
        bpb,
        f"  KL(original || compressed) {r['kl_original_to_compressed']:.4g} nats per token; top-1 agreement"
        f" {r['top1_agreement']:.2%}",
        f"  targets with a row of their own: {r['own_row_share']:.1%}, with the original's row exactly:"
        f" {r['exact_row_share']:.1%}",
        f"  head: {r['head_params']:,} parameters ({r['head_params'] / r['dense_head_params']:.1%} of the dense"
        f" head's), {_mb(r['head_bytes'])} as stored ({r['head_bytes'] / r['dense_head_bytes']:.1%} of its"
        f" {_mb(r['dense_head_bytes'])} in fp32)",
    ]


def _indexed(r: dict) -> list[str]:
    lines = [f"{r['folder']}: accelerated (the original's logits), {r['tokens']:,} hidden states of {r['corpus']}"]
    for m in r["modes"]:
        certified = f", {m['certified']:.1%} certified" if "certified" in m else ""
        lines.append(
            f"  {m['mode']} greedy ({m['probes']} of {m['clusters']} clusters first): top-1 = original's"
            f" {m['agreement']:.2%}{certified}; the head alone x{m['head_speedup_b1']:.2f} the dense head's speed"
            f" at batch 1"
        )
    return lines


def _scalars(r: dict, indent: str = "") -> list[str]:
    """Any other result: its numbers and names, one per line, nested dicts indented."""
    lines = []
    for k, v in r.items():
        if isinstance(v, dict):
            lines += [f"{indent}{k}:", *_scalars(v, indent + "  ")]
        elif isinstance(v, float):
            lines.append(f"{indent}{k}: {v:.4f}")
        elif v is not None and not isinstance(v, list):
            counted = isinstance(v, int) and not isinstance(v, bool)  # True is an int, not a count
            lines.append(f"{indent}{k}: {v:,}" if counted else f"{indent}{k}: {v}")
    return lines


def eval_summary(r: dict) -> str:
    """What ``eval`` measured: a compressed model against its original, an accelerated one's modes,
    each with end-to-end decoding; a run's or the original's scores."""
    if "ppl_compressed" in r:
        return "\n".join([*_compressed(r), _decode(r)])
    if "modes" in r:
        return "\n".join([*_indexed(r), _decode(r)])
    return "\n".join(_scalars(r))
