"""scripts/install-comfyui on a stand-in ComfyUI folder, with a stand-in Python that records its calls."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install-comfyui"


def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    comfy = tmp_path / "ComfyUI"
    (comfy / "custom_nodes").mkdir(parents=True)
    (comfy / "main.py").write_text("")
    calls = tmp_path / "calls.txt"
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    python.chmod(0o755)
    return comfy, python, calls


def run(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # no nvidia-smi: the CPU extra
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=60)


def test_links_the_pack_and_installs_depthrt_into_comfyuis_python(tmp_path):
    comfy, python, calls = setup(tmp_path)
    for _ in range(2):  # again: replaces its own link
        result = run(comfy, "--python", python)
        assert result.returncode == 0, result.stderr
    link = comfy / "custom_nodes" / "depthrt"
    assert link.is_symlink() and link.resolve() == (ROOT / "comfyui").resolve()
    assert (comfy / "models" / "depthrt").is_dir()
    assert f"-m pip --disable-pip-version-check -q install -e {ROOT}[cpu]" in calls.read_text()
    assert "linked" in result.stdout and "models/depthrt/<bundle>/" in result.stdout


def test_refuses_what_is_not_its_own(tmp_path):
    comfy, python, calls = setup(tmp_path)
    other = comfy / "custom_nodes" / "depthrt"
    other.mkdir()
    (other / "keep.txt").write_text("someone else's")
    result = run(comfy, "--python", python)
    assert result.returncode == 1 and "exists and is not depthrt's pack" in result.stderr
    assert (other / "keep.txt").read_text() == "someone else's" and "install" not in calls.read_text()
    result = run(tmp_path, "--python", python)
    assert result.returncode == 2 and "is not a ComfyUI checkout" in result.stderr
