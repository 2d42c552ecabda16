"""`depthrt bench`: stages, statistics, reference, accuracy, table and JSON. No timing thresholds."""

import json

import numpy as np
import pytest

import depthrt
from conftest import assert_clean_error, run_cli
from depthrt.bench import format_table, parse_size, run_bench, summarise
from depthrt.errors import InputError
from depthrt.samples import synthetic_image


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle("depth-anything-v2-small")[0]


def test_summarise_median_and_p90():
    s = summarise([float(v) for v in range(1, 11)])
    assert s["median_ms"] == 5.5 and s["min_ms"] == 1.0 and s["runs"] == 10
    assert 9.0 <= s["p90_ms"] <= 10.0


def test_parse_size():
    assert parse_size("640x480") == (480, 640)
    with pytest.raises(InputError, match="WIDTHxHEIGHT"):
        parse_size("640")


def test_bench_against_the_pytorch_reference(bundle):
    report = run_bench(bundle, backends=["ort-cpu"], size=(120, 160), runs=3, warmup=1, references=("eager",))
    rows = {r["label"]: r for r in report["entries"]}
    assert set(rows) == {"pytorch eager", "ort-cpu fp32"}
    ours = rows["ort-cpu fp32"]
    assert ours["error"] is None
    for stage in ("preprocess", "inference", "postprocess", "end_to_end"):
        st = ours["stages"][stage]
        assert st["runs"] == 3 and 0 <= st["median_ms"] <= st["p90_ms"]
    e2e = ours["stages"]["end_to_end"]["median_ms"]
    assert ours["fps"] == pytest.approx(1000 / e2e)
    assert ours["speedup"] == pytest.approx(rows["pytorch eager"]["stages"]["end_to_end"]["median_ms"] / e2e)
    assert ours["accuracy_vs"] == "pytorch eager" and ours["rel_l2_vs_fp32"] < 1e-3
    assert report["image"] == "160x120" and "cpu_bf16" in report["machine"]
    assert report["warmup"] == 2  # at least two: OpenVINO compiles a shape's own model on its second frame
    table = format_table(report)
    assert "ort-cpu fp32" in table and "pytorch eager" in table and "speed-up" in table


def test_bench_frame_is_what_predict_returns(bundle):
    from depthrt.bench import _BundleFrame

    image = synthetic_image(150, 210, seed=2)
    est = depthrt.load(bundle, backend="ort-cpu")
    depth, seconds = _BundleFrame(est)(image)
    np.testing.assert_array_equal(depth, est.predict(image).depth)
    assert seconds["end_to_end"] >= seconds["inference"]


def test_bench_reports_a_backend_that_cannot_run_and_goes_on(bundle):
    report = run_bench(bundle, backends=["ort-cpu"], precisions=["fp32", "bf16"], size=(100, 100), runs=1,
                       warmup=1, references=())
    rows = {r["label"]: r for r in report["entries"]}
    assert rows["ort-cpu fp32"]["error"] is None
    assert "openvino" in rows["ort-cpu bf16"]["error"]  # the refusal names where bf16 runs
    assert "not measured" in format_table(report)
    assert "speedup" not in rows["ort-cpu fp32"]  # no reference, no ratio
    assert rows["ort-cpu fp32"]["rel_l2_vs_fp32"] == 0.0  # the first fp32 entry is the accuracy reference


def test_bench_rejects_an_unknown_reference(bundle):
    with pytest.raises(InputError, match="eager, compile"):
        run_bench(bundle, backends=["ort-cpu"], references=("jit",))


def test_cli_bench_writes_table_and_json(bundle, tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("bench", str(bundle), "--backend", "ort-cpu", "--runs", "2", "--warmup", "1", "--size", "160x120",
                     "--reference", "none", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "ort-cpu fp32" in result.stdout and "FPS" in result.stdout
    report = json.loads(out.read_text())
    assert report["entries"][0]["stages"]["end_to_end"]["runs"] == 2
    assert report["entries"][0]["peak_mib"] is None or report["entries"][0]["peak_mib"] >= 0


def test_cli_bench_bad_size_is_a_clean_error(bundle):
    assert_clean_error(run_cli("bench", str(bundle), "--size", "huge", "--reference", "none"), "WIDTHxHEIGHT")


def test_cli_bench_missing_bundle_is_a_clean_error(tmp_path):
    assert_clean_error(run_cli("bench", str(tmp_path / "nope"), "--reference", "none"), "does not exist")
