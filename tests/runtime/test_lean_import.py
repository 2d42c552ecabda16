"""The runtime never loads torch, transformers, diffusers or onnx: not on import, not when predicting."""

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "diffusers", "onnx")


def _loaded_after(code: str) -> list[str]:
    probe = code + f"\nimport sys, json\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_depthrt_loads_no_heavy_module():
    assert _loaded_after("import depthrt, depthrt.cli, depthrt.imageio, depthrt.processing") == []


def test_predict_loads_no_heavy_module(tiny_bundle):
    bundle, _ = tiny_bundle("depth-anything-v2-small")
    code = (
        "import numpy as np, depthrt\n"
        f"est = depthrt.load({str(bundle)!r}, backend='ort-cpu')\n"
        "est.predict(np.zeros((40, 60, 3), np.uint8))"
    )
    assert _loaded_after(code) == []


def test_lean_probe_would_see_torch():
    # The probe itself works: importing torch shows up.
    assert "torch" in _loaded_after("import torch")
