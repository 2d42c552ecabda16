"""scripts/compare_fp16.py: our fp16 converter against ModelOpt AutoCast (measuring code only; the real-size
comparison itself is too slow for CI and its table lives in docs/performance.md)."""

import json
import stat
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import compare_fp16  # noqa: E402


def _graph(path: Path) -> dict:
    """x (1x3x8x8) -> Conv 3->4 -> Relu -> Conv 4->2 -> y; returns a feed."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3), dtype=np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1), dtype=np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return {"x": rng.standard_normal((1, 3, 8, 8), dtype=np.float32)}


def test_fp32_nodes_counts_compute_nodes_with_a_float32_output(tmp_path):
    _graph(tmp_path / "g.onnx")
    assert compare_fp16.fp32_nodes(tmp_path / "g.onnx") == (3, 3)
    from depthrt_export.fp16 import convert

    convert(tmp_path / "g.onnx", tmp_path / "h.onnx", scopes=(), keep_nodes=["conv2"])
    # conv1 and relu run in fp16; conv2 stays fp32; the inserted Casts are not counted
    assert compare_fp16.fp32_nodes(tmp_path / "h.onnx") == (1, 3)


def test_measure_gives_our_row_and_reuses_it(tmp_path):
    feed = _graph(tmp_path / "g.onnx")
    (row,) = compare_fp16.measure("g", tmp_path / "g.onnx", [feed], [feed], None, False, None, 512.0, tmp_path)
    assert row["tool"] == "depthrt" and row["finite"] and 0 < row["rel_l2"] < 1e-2
    assert (row["fp32_nodes"], row["nodes"]) == (0, 3)
    cached = tmp_path / "variants" / "g.depthrt.json"
    assert json.loads(cached.read_text()) == row
    cached.write_text(json.dumps({**row, "seconds": -1.0}))
    (again,) = compare_fp16.measure("g", tmp_path / "g.onnx", [feed], [feed], None, False, None, 512.0, tmp_path)
    assert again["seconds"] == -1.0  # reused, not converted again


def _fake_python(tmp_path: Path, driver: str) -> str:
    """An interpreter stand-in: imports succeed, the AutoCast driver runs the shell lines ``driver``."""
    exe = tmp_path / "fake-python"
    exe.write_text("#!/bin/sh\ncase \"$2\" in\n  import*) exit 0;;\nesac\n" + driver)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


def test_autocast_failure_is_a_row_not_a_crash(tmp_path):
    feed = _graph(tmp_path / "g.onnx")
    python = compare_fp16.autocast_python(_fake_python(tmp_path, "echo 'ValueError: no autocast here' >&2\nexit 1\n"))
    ours, theirs = compare_fp16.measure("g", tmp_path / "g.onnx", [feed], [feed], None, False, python, 512.0,
                                        tmp_path)
    assert "error" not in ours
    assert theirs["tool"] == "autocast" and "ValueError: no autocast here" in theirs["error"]
    assert "failed:" in compare_fp16.format_row(theirs)


def test_autocast_out_of_memory_runs_again_without_its_reference_run(tmp_path):
    feed = _graph(tmp_path / "g.onnx")
    # killed (SIGKILL, as the OOM killer does) unless data_max is inf
    exe = _fake_python(tmp_path, "if [ \"$6\" = inf ]; then cp \"$3\" \"$4\"; echo 'AUTOCAST 1.5 0.25'; exit 0; fi\n"
                                 "kill -9 $$\n")
    _, theirs = compare_fp16.measure("g", tmp_path / "g.onnx", [feed], [feed], None, False, exe, 512.0,
                                     tmp_path)
    assert theirs["calibration"].startswith("no reference run") and theirs["seconds"] == 1.5
    assert theirs["rel_l2"] == 0.0 and theirs["finite"] and theirs["peak_gb"] == 0.2


def test_autocast_missing_or_unknown_model_is_reported(tmp_path, capsys):
    assert compare_fp16.autocast_python(str(tmp_path / "no-such-python")) is None
    assert compare_fp16.main(["--work", str(tmp_path), "--models", "da-v2-s,nope"]) == 2
    assert "unknown model(s) nope" in capsys.readouterr().err
