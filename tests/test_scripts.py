"""Developer scripts that print the figures our notes quote: scripts/cpu_bound.py."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import cpu_bound


def _graph(path: Path) -> None:
    """x (1x3x20x24) -> Conv 3->8 3x3 pad 1 -> reshape to (8, 480) -> MatMul with a (480, 16)
    weight -> MatMul with its own transpose (an activation-by-activation product, as attention has)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.random((8, 3, 3, 3), dtype=np.float32), "w_conv"),
             numpy_helper.from_array(np.array([8, 480], np.int64), "shape"),
             numpy_helper.from_array(rng.random((480, 16), dtype=np.float32), "w_fc")]
    nodes = [helper.make_node("Conv", ["x", "w_conv"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("MatMul", ["r", "w_fc"], ["f"]),
             helper.make_node("Transpose", ["f"], ["ft"], perm=[1, 0]),
             helper.make_node("MatMul", ["f", "ft"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 20, 24])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_graph_flops_counts_each_kind_exactly(tmp_path):
    _graph(tmp_path / "g.onnx")
    flops = cpu_bound.graph_flops(tmp_path / "g.onnx", {"x": np.zeros((1, 3, 20, 24), np.float32)})
    assert flops == {
        "Conv": 2.0 * (8 * 20 * 24) * (3 * 3 * 3),
        "MatMul (weights)": 2.0 * 8 * 480 * 16,
        "MatMul (activations: attention)": 2.0 * 8 * 16 * 8,
    }


def test_cpu_bound_reports_work_peaks_and_bound(tiny_bundle, tmp_path):
    pytest.importorskip("openvino")
    bundle = tiny_bundle("depth-anything-v2-small")[0]
    out = tmp_path / "bound.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "cpu_bound.py"), str(bundle), "--image", "64x48",
                             "--reference-ms", "1000", "--json", str(out)],
                            check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["model_size"] == [392, 518]  # upscaling keeps the scale closer to 1: 518/64
    assert report["gflop"]["MatMul (weights)"] > 0 and report["gflop"]["MatMul (activations: attention)"] > 0
    total = sum(report["gflop"].values())
    fp32 = report["precisions"]["fp32"]
    assert fp32["inference_lower_bound_ms"] == pytest.approx(total / fp32["matmul_peak_gflops"] * 1e3)
    assert fp32["max_speedup"] == pytest.approx(1000 / fp32["inference_lower_bound_ms"])
    assert "GFLOP" in result.stdout and "inference >=" in result.stdout


def test_cpu_bound_unknown_graph_is_a_clean_error(tiny_bundle):
    bundle = tiny_bundle("depth-anything-v2-small")[0]
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "cpu_bound.py"), str(bundle), "--graph", "unet"],
                            check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert "no graph 'unet'" in result.stderr and "Traceback" not in result.stderr


def test_gpu_check_runs_on_the_cpu_with_tiny_models(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "gpu_check.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--tiny", "--device", "cpu",
                             "--models", "da-v2-small,sd2-unet", "--runs", "2", "--warmup", "1",
                             "--work", str(tmp_path / "work"), "--out", str(out)],
                            check=False, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["model"] for r in report["results"]] == ["da-v2-small", "sd2-unet"]
    for res in report["results"]:
        row = res["rows"]["ort-cpu fp16 graph"]
        assert res["parity_ok"] and row["rel_l2"] <= 2e-2 and row["nonfinite"] == 0
        assert res["islands"]  # the fp16 graph kept fp32 islands
    assert result.stdout.count("parity ok") == 2
