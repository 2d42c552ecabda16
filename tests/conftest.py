"""Shared fixtures: tiny checkpoints in the published layouts and bundles exported from them.

Both are cached per test session, so each tiny variant is written and exported once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub


@pytest.fixture(scope="session", autouse=True)
def _openvino_cache(tmp_path_factory):
    """OpenVINO's compiled-model cache in a session folder (inherited by the CLI subprocesses), not ~/.cache."""
    os.environ["DEPTHRT_OPENVINO_CACHE"] = str(tmp_path_factory.mktemp("openvino-cache"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """tiny_checkpoint(variant) -> folder with config.json, preprocessor_config.json, model.safetensors."""
    from depthrt_export.tiny import write_tiny

    root = tmp_path_factory.mktemp("checkpoints")
    made: dict[str, Path] = {}

    def make(variant: str) -> Path:
        if variant not in made:
            made[variant] = write_tiny(variant, root / variant, seed=0)
        return made[variant]

    return make


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_checkpoint):
    """tiny_bundle(preset) -> (bundle path, manifest), exported (with its parity check) once per preset."""
    from depthrt.presets import find_preset
    from depthrt_export.exporter import export_bundle

    root = tmp_path_factory.mktemp("bundles")
    made: dict[str, tuple[Path, dict]] = {}

    def make(preset_name: str):
        if preset_name not in made:
            preset = find_preset(preset_name)
            made[preset_name] = export_bundle(preset.name, weights=str(tiny_checkpoint(preset.tiny)),
                                              out=root / preset.name)
        return made[preset_name]

    return make


@pytest.fixture()
def small_filesystem(tmp_path):
    """small_filesystem(kib) -> an empty folder on a tmpfs of that many KiB: a disk that really fills up.
    Skips where a tmpfs cannot be mounted (not root, or no permission to mount)."""
    mounted: list[Path] = []

    def make(kib: int) -> Path:
        point = tmp_path / f"small-fs-{len(mounted)}"
        point.mkdir()
        try:
            done = os.geteuid() == 0 and subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "depthrt-test", str(point)],
                capture_output=True).returncode == 0
        except OSError:  # no mount command
            done = False
        if not done:
            pytest.skip("needs a size-limited tmpfs: run as root where mount -t tmpfs is allowed")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `depthrt ARGS` in a fresh process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("DEPTHRT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "depthrt.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=600)


def assert_clean_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """A user-facing failure: non-zero exit, one line on stderr naming the problem, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("depthrt")]
    assert lines and "error" in lines[-1], result.stderr
    for needle in needles:
        assert needle in lines[-1], f"{needle!r} not in {lines[-1]!r}"


class HostCudaArray:
    """Host memory presented as a CUDA array (``__cuda_array_interface__``), as CuPy or torch would: what
    the device-array paths read when they run on the CPU provider or the fake CUDA (no copy)."""

    def __init__(self, array, strides=None):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.__cuda_array_interface__ = {"shape": array.shape, "typestr": array.dtype.str, "version": 3,
                                         "data": (array.ctypes.data, False), "strides": strides}
