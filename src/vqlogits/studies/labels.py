"""How a run is named in reports: its configuration's label and the series (family) it is plotted in."""

from __future__ import annotations


def label(r: dict) -> str:
    c = r["config"]
    learned = f" learned/{c['reassign_every']}{_frac(c)}" if c.get("reassign_every") else ""
    if r["head"] == "vq" and not c.get("head_budget"):
        return _label(r)  # the map is part of the vq label
    return _label(r) + learned


def family(r: dict) -> str:
    """The series a run belongs to in the plots: one head (and map rule) across budgets."""
    c = r["config"]
    if not c.get("head_budget"):
        return label(r)
    learned = " learned" + _frac(c) if c.get("reassign_every") else ""
    return f"{r['head']}{_fixed_map(r)}{'' if c['head_bias'] else ' no-bias'}{learned}"


def _fixed_map(r: dict) -> str:
    """`` map=NAME`` for a vq head whose fixed map is not the default random one."""
    c = r["config"]
    return f" map={c['mapping']}" if r["head"] == "vq" and c.get("mapping", "random") != "random" else ""


def _frac(c: dict) -> str:
    return f" frac={c['reassign_frac']:g}" if c.get("reassign_frac", 0.05) != 0.05 else ""


def _label(r: dict) -> str:
    c, m = r["config"], r["model_config"]
    if c.get("head_budget"):
        return f"{r['head']} @{100 * c['head_budget']:g}%{_fixed_map(r)}{'' if c['head_bias'] else ' no-bias'}"
    if r["head"] == "hybrid":
        return f"hybrid {m['n_frequent']}+{m['codebook_size']}"
    if r["head"] == "hybrid-twolevel":
        return f"hybrid-twolevel {m['n_frequent']}+{m['codebook_size']} e={m['token_dim']}"
    if r["head"] == "twolevel":
        return f"twolevel K={m['codebook_size']} e={m['token_dim']}"
    if r["head"] == "vq-lowrank":
        return f"vq-lowrank K={m['codebook_size']} r={m['rank']}"
    if r["head"] == "rvq":
        return f"rvq {m['num_codebooks']}x{m['codebook_size']}"
    if r["head"] == "vq":
        extra = f" map={c['mapping']}" + (f" learned/{c['reassign_every']}{_frac(c)}" if c["reassign_every"] else "")
        extra += "" if c["head_bias"] else " no-bias"
        extra += f" cb={c['codebook_init']}" if c["codebook_init"] != "random" else ""
        return f"vq K={r['codebook_size']}{extra}"
    if r["head"] == "lowrank":
        return f"lowrank r={c['rank']}"
    return r["head"]
