"""scripts/typecheck-trt: mypy with (patched) tensorrt-stubs catches calls TensorRT 10 does not have.

The stubs are TensorRT 10.x: mypy checks our calls' signatures (arguments, keywords, return types) but
cannot see what TensorRT 11 removed (BuilderFlag.FP16, OBEY_PRECISION_CONSTRAINTS, device_memory_size, ...):
those type-check against 10.x. test_trt_api.py checks every name against TensorRT 11's real bindings.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys

import pytest

from conftest import ROOT  # tests/conftest.py


def _have_stubs() -> bool:
    try:
        importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None or not _have_stubs(),
    reason="needs mypy and tensorrt-stubs: pip install mypy; pip install --no-deps tensorrt-stubs",
)


def _typecheck(*files: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "typecheck-trt"), *files], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=300)


def test_typecheck_catches_builder_build_engine_removed_in_tensorrt_10(tmp_path):
    bad = tmp_path / "old_api.py"
    bad.write_text(
        "import tensorrt as trt\n\n"
        "def build(network: trt.INetworkDefinition) -> None:\n"
        "    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))\n"
        "    builder.build_engine(network, builder.create_builder_config())\n"
    )
    result = _typecheck(str(bad))
    assert result.returncode != 0, result.stdout + result.stderr
    assert '"Builder" has no attribute "build_engine"' in result.stdout


def test_typecheck_accepts_the_current_api(tmp_path):
    good = tmp_path / "new_api.py"
    good.write_text(
        "import tensorrt as trt\n\n"
        "def build(network: trt.INetworkDefinition) -> bytes:\n"
        "    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))\n"
        "    return bytes(builder.build_serialized_network(network, builder.create_builder_config()))\n"
    )
    result = _typecheck(str(good))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_typecheck_passes_on_the_tensorrt_code():
    result = _typecheck()
    assert result.returncode == 0, result.stdout + result.stderr
