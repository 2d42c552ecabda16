"""The CPU backends on every x86 CPU kind: AVX2-only, AVX512, AMX (issue 12, findings 1 and 6).

On an AVX2-only CPU, the README's demo failed in OpenVINO ("Broadcast ... Value -1 not in range")
right after export: the parity check's ONNX Runtime session had set denormals-are-zero in the
process's main thread (see depthrt.backends.fpenv), and OpenVINO's any-shape model computes shapes
wrongly under that flag with its AVX2 kernels. ``ONEDNN_MAX_CPU_ISA=AVX2`` caps OpenVINO's kernels
(oneDNN's and the CPU plugin's JIT ones) at AVX2 on any x86 CPU, so these tests take the AVX2-only
machine's code paths wherever they run.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import depthrt
from conftest import ROOT, assert_clean_error
from depthrt import metrics
from depthrt.backends import first_line, unavailable
from depthrt.errors import BackendError
from depthrt.imageio import read_image

needs_openvino = pytest.mark.skipif(unavailable("openvino") is not None, reason="OpenVINO is not installed")
x86_only = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                              reason="denormals-are-zero and ISA caps are x86 matters")
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2"}  # the AVX2-only machine's kernels, on any x86 CPU
SAMPLE = ROOT / "scripts" / "data" / "sample.jpg"
# What OpenVINO 2026.4 raised on the AVX2-only machine: only the last two lines say what went wrong.
OPENVINO_RUN_ERROR = (
    "Exception from src/inference/src/cpp/infer_request.cpp:224:\n"
    "Exception from src/plugins/intel_cpu/src/node.cpp:794:\n"
    "[CPU] Broadcast node with name 'Broadcast_16355' Check 'cmp::le(m_min, u) && cmp::le(u, m_max)' failed at "
    "src/core/shape_inference/include/shape_infer_type_utils.hpp:54:\n"
    "Value -1 not in range [0:18446744073709551615]\n\n\n\n"
)


def _python(code: str, *args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    full_env.pop("DEPTHRT_DEBUG", None)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout)


def _said(stderr: str) -> str:
    """depthrt's own lines of a subprocess's stderr (the export also prints the ONNX exporter's chatter)."""
    return "\n".join(line for line in stderr.splitlines() if line.startswith(("depthrt", "[depthrt]", "Assertion")))


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle("depth-anything-v2-small")[0]


# --------------------------------------------------------------------------- finding 1: the demo's sequence
DEMO_IN_ONE_PROCESS = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="[depthrt] %(message)s")  # show the backend's choices
from depthrt.cli import main
checkpoint, out, image = sys.argv[1:4]
code = main(["export", "depth-anything-v2-small", "--weights", checkpoint, "--out", out + "/bundle", "--force"])
if code == 0:
    code = main(["predict", out + "/bundle", image, "--out", out + "/depth", "--save", "npy", "--force"])
sys.exit(code)
"""


@needs_openvino
@x86_only
def test_demo_export_check_then_predict_in_one_process_runs_openvino_on_avx2(tiny_checkpoint, tmp_path):
    """scripts/demo.py's calls (export with its parity check, then predict on the `auto` backend) in one
    process, with an empty OpenVINO cache and AVX2 kernels: the any-shape model runs, with no fallback."""
    out = tmp_path / "demo"
    result = _python(DEMO_IN_ONE_PROCESS, str(tiny_checkpoint("depth-anything-v2")), str(out), str(SAMPLE),
                     env={**AVX2, "DEPTHRT_OPENVINO_CACHE": str(tmp_path / "empty-cache")})
    assert result.returncode == 0, _said(result.stderr)
    log = result.stderr
    assert "on backend openvino (fp32)" in result.stdout + log
    assert "compiling for any input shape" in log and "failed to run" not in log, _said(log)
    ours = np.load(out / "depth" / "sample.depth.npy")
    ref = depthrt.load(out / "bundle", backend="ort-cpu").predict(read_image(SAMPLE)).depth
    assert metrics.centred_rel_l2(ours, ref) < 1e-4


def _denormals_kept() -> bool:
    """Whether this thread computes with denormals (no flush-to-zero / denormals-are-zero)."""
    tiny = np.array([1e-40], dtype=np.float32)  # a float32 denormal
    return float((tiny * np.float32(1.0))[0]) != 0.0


def test_ort_cpu_leaves_the_calling_threads_float_flags_as_they_were(bundle):
    """ORT's denormals-as-zero stays inside its runs: numpy (and OpenVINO, torch) in the same thread
    keep IEEE denormals after a session is made and run."""
    assert _denormals_kept()
    est = depthrt.load(bundle, backend="ort-cpu")
    assert _denormals_kept()
    est.predict(np.full((48, 64, 3), 128, np.uint8))
    assert _denormals_kept()


CALLER_FLUSHES_DENORMALS = """
import logging, sys
import numpy as np, onnxruntime as ort
logging.basicConfig(level=logging.INFO, format="[depthrt] %(message)s")
import depthrt
bundle = sys.argv[1]
options = ort.SessionOptions()  # the application's own ORT session, made the way ORT makes it fast
options.add_session_config_entry("session.set_denormal_as_zero", "1")
ort.InferenceSession(bundle + "/model.onnx", options, providers=["CPUExecutionProvider"])
assert float((np.array([1e-40], np.float32) * np.float32(1))[0]) == 0.0, "the flags are not set"
depth = depthrt.load(bundle, backend="openvino").predict(np.full((48, 64, 3), 128, np.uint8)).depth
np.save(sys.argv[2], depth)
"""


@needs_openvino
@x86_only
@pytest.mark.parametrize("cap", ["AVX2", "AVX512_CORE", "DEFAULT"])  # AVX2-only, AVX512 without BF16, this CPU
def test_openvino_any_shape_model_runs_when_the_caller_flushes_denormals(bundle, tmp_path, cap):
    """Whatever the calling thread set (here an application's own ORT session), OpenVINO runs in the
    default floating-point environment: the any-shape model gives the ort-cpu result on every ISA."""
    result = _python(CALLER_FLUSHES_DENORMALS, str(bundle), str(tmp_path / "d.npy"),
                     env={"ONEDNN_MAX_CPU_ISA": cap, "DEPTHRT_OPENVINO_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, _said(result.stderr)
    assert "compiling for any input shape" in result.stderr and "failed to run" not in result.stderr
    ref = depthrt.load(bundle, backend="ort-cpu").predict(np.full((48, 64, 3), 128, np.uint8)).depth
    assert metrics.centred_rel_l2(np.load(tmp_path / "d.npy"), ref) < 1e-4


# --------------------------------------------------------------------------- finding 1: a run that fails
class _FailingRequest:
    def infer(self, inputs):
        raise RuntimeError(OPENVINO_RUN_ERROR)


class _FailingCompiled:
    """An OpenVINO compiled model whose runs fail as the any-shape one did on the AVX2-only machine."""

    def create_infer_request(self):
        return _FailingRequest()


def _failing_runs(runner, monkeypatch, which):
    real = runner._compile

    def compile_(model):
        compiled = real(model)
        if which(model):
            compiled.compiled = _FailingCompiled()
        return compiled

    monkeypatch.setattr(runner, "_compile", compile_)


@needs_openvino
def test_openvino_any_shape_model_failing_to_run_falls_back_to_per_shape(bundle, monkeypatch, caplog):
    from depthrt.backends.openvino import OpenVinoRunner

    runner, reference = OpenVinoRunner(bundle / "model.onnx"), OpenVinoRunner(bundle / "model.onnx")
    reference.dynamic_first = False
    _failing_runs(runner, monkeypatch, lambda model: model is runner.model)
    feeds = {"pixel_values": np.random.default_rng(0).random((1, 3, 56, 70), dtype=np.float32)}
    with caplog.at_level(logging.INFO, logger="depthrt"):
        out = runner.run(feeds)["predicted_depth"]
    assert np.array_equal(out, reference.run(feeds)["predicted_depth"])  # the per-shape model's result
    assert "any input shape failed to run" in caplog.text and "Value -1 not in range" in caplog.text
    assert runner.dynamic_first is False
    other = {"pixel_values": np.random.default_rng(1).random((1, 3, 42, 84), dtype=np.float32)}
    assert np.array_equal(runner.run(other)["predicted_depth"], reference.run(other)["predicted_depth"])


@needs_openvino
def test_cli_error_keeps_openvinos_cause_in_one_line(bundle, monkeypatch, capsys, tmp_path):
    """When every model fails to run, the one-line error says OpenVINO's cause, not its throw sites."""
    from depthrt.backends import openvino as ov_backend
    from depthrt.cli import main

    real = ov_backend.OpenVinoRunner._compile

    def failing(self, model):
        compiled = real(self, model)
        compiled.compiled = _FailingCompiled()
        return compiled

    monkeypatch.setattr(ov_backend.OpenVinoRunner, "_compile", failing)
    image = tmp_path / "a.png"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(image)
    code = main(["predict", str(bundle), str(image), "--out", str(tmp_path / "o"), "--backend", "openvino"])
    err = capsys.readouterr().err
    result = subprocess.CompletedProcess([], code, "", err)
    assert_clean_error(result, "openvino failed to run the graph", "[CPU] Broadcast node", "Value -1 not in range")
    assert "infer_request.cpp" not in err


def test_first_line_drops_throw_sites_and_stays_bounded():
    line = first_line(RuntimeError(OPENVINO_RUN_ERROR))
    assert line.startswith("[CPU] Broadcast node") and line.endswith("Value -1 not in range [0:18446744073709551615]")
    assert "\n" not in line
    assert len(first_line(RuntimeError("x" * 1000 + "\nmore"), limit=100)) == 100
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(RuntimeError("Exception from src/a.cpp:1:\n")) == "Exception from src/a.cpp:1:"


# --------------------------------------------------------------------------- finding 6: bf16 where it runs
@needs_openvino
def test_bf16_is_refused_with_its_reason_under_an_avx2_cap(bundle, monkeypatch):
    """OpenVINO reports the CPU's BF16 whatever the cap, then fails to compile bf16 kernels: the cap counts."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    with pytest.raises(BackendError) as err:
        depthrt.load(bundle, backend="openvino", precision="bf16")
    assert "AVX512-BF16 or AMX" in str(err.value) and "capped at AVX2 by ONEDNN_MAX_CPU_ISA" in str(err.value)
    assert "--precision fp32" in str(err.value)
