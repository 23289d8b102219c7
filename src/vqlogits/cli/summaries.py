"""The few lines ``compress``, ``accelerate`` and ``calibrate`` end with (``--json``: the dict itself)."""

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
    """What ``calibrate`` did: each stage's steps, seconds and last loss."""
    lines = [f"{folder}: calibrated and saved"]
    for name, stage in summary["stages"].items():
        loss = "–" if stage["final_loss"] is None else f"{stage['final_loss']:.4f}"
        lines.append(f"  stage {name}: {stage['steps']:,} steps in {stage['seconds']:,.0f} s, last loss {loss}")
    return "\n".join(lines)
