"""The check's printed table: a reduced-precision variant over its line says plainly that it is reported, not
gated (the verdict stays PASSED), and names the command that gates on it."""

from __future__ import annotations

from depthrt_export.check import format_report


def _report(within: bool, finite: bool = True) -> dict:
    row = {"image": "synthetic 333x517", "rel_l2": 7e-6, "max_abs": 1e-7, "abs_rel": 1e-5, "delta1": 1.0,
           "passed": True}
    variant = {"precision": "bf16", "backend": "openvino", "tolerance": {"rel_l2": 0.06, "abs_rel": 0.06},
               "worst_rel_l2": 0.01 if within else 0.0485, "worst_abs_rel": 0.02 if within else 0.0957,
               "within_tolerance": within, "passed": finite}
    return {"reference": "ref", "backend": "ort-cpu", "precision": "fp32",
            "tolerance": {"rel_l2": 1e-3, "abs_rel": 1e-3}, "images": [row], "variants": [variant],
            "passed": finite}


def test_variant_over_its_line_is_explained_and_names_the_gating_command():
    table = format_report(_report(within=False))
    assert "(tolerance 0.06 / 0.06: over), finite" in table
    assert "reported, not gated" in table and "`depthrt check B --precision bf16`" in table
    assert table.splitlines()[-1] == "PASSED"


def test_variant_within_its_line_or_non_finite_gets_no_such_note():
    assert "not gated" not in format_report(_report(within=True))
    broken = format_report(_report(within=False, finite=False))
    assert "FAIL: non-finite values" in broken and "not gated" not in broken
    assert broken.splitlines()[-1] == "FAILED"
