"""scripts/comfyui-check against a real ComfyUI checkout: set COMFYUI_DIR (and COMFYUI_PYTHON, its
interpreter with depthrt installed, unless the checkout has a venv). CI has no ComfyUI: it skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("COMFYUI_DIR"),
                    reason="COMFYUI_DIR is not set: no ComfyUI checkout to run the nodes in")
def test_nodes_in_a_real_comfyui():
    command = [sys.executable, str(ROOT / "scripts" / "comfyui-check"), os.environ["COMFYUI_DIR"]]
    if os.environ.get("COMFYUI_PYTHON"):
        command += ["--python", os.environ["COMFYUI_PYTHON"]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3000)
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "all checks passed" in result.stdout
    assert result.stdout.count("PASS") >= 8  # 3 workflow pairs, 4 saved maps, the error messages
