"""`vqlogits report` on compressed pretrained models: one row per head and map, one column per size."""

from __future__ import annotations

import json
import math

import pytest

from vqlogits.studies.pretrained_report import load_evals, plotted, pretrained_report


def _model(root, name, head, head_params, ppls, reassign_every, head_bytes=None, gaps=None):
    folder = root / name
    folder.mkdir()
    calibration = [
        {"stages": {"1": {"steps": 100, "reassign_every": reassign_every}}},
        {"stages": {"2": {"steps": 10}}},
    ]
    (folder / "vqlogits.json").write_text(json.dumps({"head": head, "calibration": calibration}))
    for key, ppl in zip(("kmeans", "stage1", "stage2", "full"), ppls, strict=False):  # the stages it reached
        (folder / f"eval_{key}.json").write_text(
            json.dumps(
                {
                    "ppl_original": 10.0,
                    "ppl_compressed": ppl,
                    "kl_original_to_compressed": 0.1,
                    "top1_agreement": 0.9,
                    "head_params": head_params,
                    "dense_head_params": 1000,
                    "eval_tokens": 8192 if key != "full" else 69000,
                    **({"head_bytes": head_bytes} if head_bytes else {}),  # older evaluations lack it
                    **({"window_gaps": gaps} if gaps else {}),
                }
            )
        )


def test_final_table_has_one_row_per_head_and_map(tmp_path):
    _model(tmp_path, "a", "vq", 85, (50.0, 20.0, 15.0), 50)
    _model(tmp_path, "b", "vq", 20, (90.0, 40.0), 0)  # stage 2 not run yet: its last stage is stage 1
    _model(tmp_path, "c", "hybrid-twolevel", 85, (30.0, 12.0, 10.5, 10.4), 50, head_bytes=170_000)
    full = tmp_path / "c" / "eval_full.json"
    full.write_text(json.dumps({**json.loads(full.read_text()), "ppl_ratio_interval95": [1.01, 1.07]}))
    (tmp_path / "c" / "generation.txt").write_text("The os module provides a portable way\n")
    report = pretrained_report(tmp_path, tmp_path / "out").read_text()
    final = report.split("## Every stage")[0]
    assert "| head, map | 2% of the head | 8.5% of the head |" in final
    assert "| hybrid-twolevel, learned map | – | +4.0% [+1.0, +7.0] (10.40, stage 2, whole test split) |" in final
    assert "| vq, k-means map | +300.0% (40.00, stage 1 (head)) | – |" in final
    assert "| vq, learned map | – | +50.0% (15.00, stage 2 (last layers)) |" in final
    assert "## Greedy generations\n\n**c**\n\n~~~text\nThe os module provides a portable way\n~~~" in report
    assert (tmp_path / "out" / "pretrained_ppl_vs_params.png").stat().st_size > 0
    assert "| c | + stage 2, whole test split | 10 | 69,000 | 85 | 8.5% | 0.17 |" in report
    assert "| b | + stage 1 (head) | 100 | 8,192 | 20 | 2.0% | – |" in report
    assert (tmp_path / "out" / "pretrained_ppl_vs_bytes.png").stat().st_size > 0  # c has its bytes
    assert len(load_evals(tmp_path)) == 9
    assert json.loads((tmp_path / "out" / "rows.json").read_text()) == load_evals(
        tmp_path
    )  # the data outlives the runs
    # the plot leaves out b, still in calibration, beside models that finished stage 2
    assert sorted(r["model"] for r in plotted(load_evals(tmp_path))) == ["a", "c"]


def test_no_evaluations_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no compressed model"):
        load_evals(tmp_path)


def test_equal_bytes_table_and_fronts(tmp_path):
    # q: 4 MB, ×2.0 uncalibrated, ×1.2 after stage 1; big: 40 MB, ×1.1 then ×1.05; small: 1 MB, ×3.0, not calibrated
    _model(tmp_path, "q", "quantized", 1000, (20.0, 12.0), 50, head_bytes=4_000_000, gaps=[0.2, 0.1])
    for key, bpb in (("kmeans", 1.8), ("stage1", 1.6)):  # bits per byte: q's evaluations have them
        f = tmp_path / "q" / f"eval_{key}.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), "bpb_original": 1.5, "bpb_compressed": bpb}))
    _model(tmp_path, "big", "quantized", 1000, (11.0, 10.5), 50, head_bytes=40_000_000, gaps=[0.05, 0.05])
    _model(tmp_path, "small", "hybrid-twolevel", 100, (30.0,), 0, head_bytes=1_000_000)
    _model(tmp_path, "worse", "hybrid", 300, (15.0, 11.0), 0, head_bytes=50_000_000)  # big: smaller and better
    for name in ("q", "big"):
        meta = tmp_path / name / "vqlogits.json"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "bits": 4, "group_size": 32}))
    reference = {"ppl_original": 10.0, "ppl_compressed": 10.01, "kl_original_to_compressed": 0.0, "top1_agreement": 1.0}
    (tmp_path / "bf16.json").write_text(
        json.dumps(
            {
                **reference,
                "head": "dense bfloat16",
                "head_params": 1000,
                "dense_head_params": 1000,
                "head_bytes": 80_000_000,
            }
        )
    )
    report = pretrained_report(tmp_path, tmp_path / "out").read_text()
    original, table = report.split("## At equal bytes\n\n")[1].split("\n\n")[:2]
    assert original == "The original: 1.5000 bits per byte."
    table = table.splitlines()[2:]
    assert [row.split(" | ")[0] for row in table] == ["| small", "| q", "| big", "| worse", "| bf16"]  # by bytes
    assert table[0].endswith("| – | – | – | – | – | yes / – |")  # not calibrated: no stage-1 point
    assert (
        "| ×2.000 [2.000, 2.000] | 0.100 | 90.0% | 1.8000 | ×1.200 [1.200, 1.200] | 0.100 | 90.0% | 1.6000 |"
        in table[1]
    )
    assert table[1].endswith("yes / yes |") and table[2].endswith("| (the best) | yes / yes |")
    # q against big (the best after stage 1 with per-window gaps; bf16 has none): differences 0.15, 0.05,
    # mean 0.1, standard error 0.05, t(1 df) 12.706
    lo, hi = math.exp(0.1 - 12.706 * 0.05), math.exp(0.1 + 12.706 * 0.05)
    assert f"| ×{12.0 / 10.5:.3f} [{lo:.3f}, {hi:.3f}] | yes / yes |" in table[1]
    assert table[3].endswith(f"| ×{11.0 / 10.5:.3f} | – / – |")  # off both fronts; no gaps, no interval
    assert "(no calibration)" in table[4] and table[4].endswith("yes / yes |")  # the reference is in both panels
    assert (tmp_path / "out" / "pretrained_ppl_vs_bytes.png").stat().st_size > 0


def test_rows_of_an_earlier_report_are_kept_for_models_not_measured_again(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    _model(first, "a", "vq", 85, (50.0, 20.0), 50)
    _model(first, "b", "vq", 20, (90.0, 40.0), 0)
    pretrained_report(first, tmp_path / "out")
    _model(second, "b", "vq", 20, (80.0,), 0)  # b measured again, on a new machine: its new rows win
    _model(second, "c", "hybrid", 85, (30.0,), 0)
    rows = json.loads(
        (pretrained_report(second, tmp_path / "out", tmp_path / "out" / "rows.json").parent / "rows.json").read_text()
    )
    assert sorted((r["model"], r["stage_key"], r["ppl_compressed"]) for r in rows) == [
        ("a", "kmeans", 50.0),
        ("a", "stage1", 20.0),
        ("b", "kmeans", 80.0),
        ("c", "kmeans", 30.0),
    ]


def test_a_second_domain_gets_its_own_table_and_row_of_panels(tmp_path):
    _model(tmp_path, "q", "quantized", 1000, (20.0, 12.0), 50, head_bytes=4_000_000)
    _model(tmp_path, "f", "frequent", 100, (30.0, 25.0), 0, head_bytes=1_000_000)
    meta = tmp_path / "q" / "vqlogits.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "bits": 4, "group_size": 32}))
    for name, ppl in (("q", 40.0), ("f", 90.0)):  # the other domain: worse, and the frequent rows much worse
        for key in ("kmeans", "stage1"):
            r = json.loads((tmp_path / name / f"eval_{key}.json").read_text())
            r.update(ppl_compressed=ppl, corpus="devdocs", exact_row_share=0.25 if name == "f" else 0.0)
            r.update(own_row_share=0.5 if name == "f" else 1.0)
            (tmp_path / name / f"eval_{key}-devdocs.json").write_text(json.dumps(r))
    reference = {"ppl_original": 10.0, "kl_original_to_compressed": 0.0, "top1_agreement": 1.0, "head_params": 1000}
    reference.update(dense_head_params=1000, head_bytes=80_000_000, dense_head_bytes_bf16=56_000_000)
    (tmp_path / "bf16.json").write_text(json.dumps({**reference, "ppl_compressed": 10.01}))
    (tmp_path / "bf16-devdocs.json").write_text(json.dumps({**reference, "ppl_compressed": 10.02, "corpus": "devdocs"}))
    report = pretrained_report(tmp_path, tmp_path / "out").read_text()
    first, second = report.split("## At equal bytes\n\n")[1], report.split("## At equal bytes, on devdocs\n\n")[1]
    assert "×3.000" in first and "×9.000" not in first.split("## At equal bytes, on devdocs")[0]
    rows = second.split("\n\n")[0].splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == ["| f", "| q", "| bf16"]
    assert "×9.000" in rows[0] and "(50% own rows, 25% exact rows)" in rows[0] and "×1.002" in rows[2]
    import matplotlib.pyplot as plt

    height, width = plt.imread(tmp_path / "out" / "pretrained_ppl_vs_bytes.png").shape[:2]
    assert height > 0.7 * width and not list((tmp_path / "out").glob("*-devdocs.png"))  # one figure, a row per domain
    assert "| frequent |" in report and "frequent, k-means" not in report  # no map to name


def test_a_reference_alone_names_its_domain(tmp_path):
    """Before any model's evaluation on the other corpus has landed, bf16-devdocs.json is still
    that corpus's reference, not a row of the calibration corpus's table."""
    _model(tmp_path, "f", "frequent", 100, (30.0, 25.0), 0, head_bytes=1_000_000)
    reference = {"ppl_original": 10.0, "kl_original_to_compressed": 0.0, "top1_agreement": 1.0, "head_params": 1000}
    reference.update(dense_head_params=1000, head_bytes=80_000_000, dense_head_bytes_bf16=56_000_000)
    (tmp_path / "bf16-devdocs.json").write_text(json.dumps({**reference, "ppl_compressed": 10.02, "corpus": "devdocs"}))
    report = pretrained_report(tmp_path, tmp_path / "out").read_text()
    first = report.split("## At equal bytes\n\n")[1].split("## At equal bytes, on devdocs")[0]
    assert "bf16-devdocs" not in report and "| f |" in first
    assert "×1.002" in report.split("## At equal bytes, on devdocs\n\n")[1]
