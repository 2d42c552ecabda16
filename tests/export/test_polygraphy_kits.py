"""Every family's Polygraphy parity kit passes `polygraphy run --onnxrt` for its fp32 graphs and fp16
variants, exactly as CI and a user run it; a corrupted reference fails it, and `depthrt check` runs the
same kits through Polygraphy's comparator.

The kits are written by `depthrt export` (tests/conftest.py `tiny_bundle`), so these tests reuse the
session's tiny bundles; each test runs its family's polygraphy commands side by side (start-up is
most of their time).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from depthrt_export import kit

# One preset per family: DPT/MiDaS, ZoeDepth, Depth Anything V1 and V2, DA3, Marigold, Lotus, LBM.
FAMILY_PRESETS = ("dpt-hybrid-midas", "zoedepth-nyu-kitti", "depth-anything-small", "depth-anything-v2-small",
                  "da3-mono-large", "marigold-depth-v1-1", "lotus-depth-g-v2-1-disparity", "lbm-depth")
POLYGRAPHY = Path(sys.executable).with_name("polygraphy")


def _run_all(commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Run the polygraphy commands side by side (2 at a time: CI has 2 cores)."""
    env = {**os.environ, "POLYGRAPHY_AUTOINSTALL_DEPS": "0"}
    done = []
    for i in range(0, len(commands), 2):
        procs = [(argv, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
                 for argv in commands[i:i + 2]]
        for argv, proc in procs:
            out, _ = proc.communicate(timeout=300)
            done.append(subprocess.CompletedProcess(argv, proc.returncode, out, ""))
    return done


def _cli(bundle: Path, graph: dict, outputs: Path | None = None) -> list[str]:
    argv = kit.polygraphy_command(bundle, graph)
    argv[0] = str(POLYGRAPHY)
    if outputs is not None:
        argv[argv.index("--load-outputs") + 1] = str(outputs)
    return argv


def _printed(bundle: Path, capsys, *flags: str) -> list[list[str]]:
    """The commands `python -m depthrt_export.kit BUNDLE` prints (what a user pastes), as argv."""
    capsys.readouterr()  # what ran before (an export's parity table) is not the printer's
    assert kit.main([str(bundle), *flags]) == 0
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert all(argv[:2] == ["polygraphy", "run"] for argv in commands), commands
    return [[str(POLYGRAPHY), *argv[1:]] for argv in commands]


@pytest.mark.slow
@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_every_graph_passes_its_kit_with_polygraphy_onnxrt(preset, tiny_bundle, capsys):
    bundle, manifest = tiny_bundle(preset)
    graphs = manifest["graphs"]
    # every graph, fp32 and its fp16 variant, has a kit with its own precision's tolerances
    assert {g.get("precision", "fp32") for g in graphs} == {"fp32", "fp16"}
    assert all("parity_kit" in g for g in graphs), [g["file"] for g in graphs if "parity_kit" not in g]
    for g in graphs:
        tol = g["parity_kit"]["tolerances"]
        assert set(tol) == {t["name"] for t in g["outputs"]}
        assert all(v["rtol"] == kit.LIMITS[g.get("precision", "fp32")] for v in tol.values())
    commands = _printed(bundle, capsys)
    assert [argv[2] for argv in commands] == [str(bundle / g["file"]) for g in graphs]
    results = _run_all(commands)
    for g, r in zip(graphs, results):
        assert r.returncode == 0, f"{g['file']}:\n{r.stdout[-3000:]}"
        assert "PASSED | Output" in r.stdout and "\n[I] PASSED | Runtime" in r.stdout, r.stdout[-3000:]


def _corrupt(src: Path, dest: Path, graph: dict) -> Path:
    """A copy of a kit's reference outputs with one patch moved by 10x the fp16 limit of its peak."""
    from polygraphy.comparator import RunResults

    results = RunResults.load(str(src))
    name = graph["outputs"][0]["name"]
    outputs = results[kit.REFERENCE_RUNNER][0]
    values = np.array(outputs[name])
    flat = values.reshape(-1)
    flat[: max(1, flat.size // 100)] += 10 * kit.LIMITS["fp16"] * graph["parity_kit"]["reference_max_abs"][name]
    outputs[name] = values
    results.save(str(dest))
    return dest


def test_a_corrupted_reference_fails_polygraphy_run(tiny_bundle, tmp_path):
    bundle, manifest = tiny_bundle("depth-anything-v2-small")
    graphs = manifest["graphs"]
    bad = _corrupt(bundle / graphs[0]["parity_kit"]["outputs"], tmp_path / "bad.outputs.json", graphs[0])
    results = _run_all([_cli(bundle, g, outputs=bad) for g in graphs])  # fp32 and fp16 graph alike
    for g, r in zip(graphs, results):
        assert r.returncode != 0, f"{g['file']} passed against a corrupted reference:\n{r.stdout[-2000:]}"
        assert "FAILED" in r.stdout


def _copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest, ignore=shutil.ignore_patterns("engines"))
    return dest


def test_check_runs_the_kits_through_polygraphy_and_fails_on_a_bad_one(tiny_bundle, tmp_path):
    from conftest import run_cli

    bundle, manifest = tiny_bundle("depth-anything-v2-small")
    # in-process, as `depthrt check` calls it: each graph of the precision, Polygraphy's comparator
    rows = kit.check_kits(bundle, manifest, "ort-cpu", "fp32")
    assert [r["graph"] for r in rows] == ["model"] and rows[0]["passed"], rows
    worst = rows[0]["outputs"]["predicted_depth"]
    assert worst["max_abs"] <= worst["atol"]

    copy = _copy(bundle, tmp_path / "bundle")
    graph = manifest["graphs"][0]
    _corrupt(bundle / graph["parity_kit"]["outputs"], copy / graph["parity_kit"]["outputs"], graph)
    bad = run_cli("check", str(copy), "--backend", "ort-cpu", "--json", str(tmp_path / "bad.json"))
    assert bad.returncode != 0, bad.stdout + bad.stderr
    lines = bad.stdout.splitlines()
    kit_line = next(line for line in lines if line.startswith("Polygraphy kit model (fp32, ort-cpu): "
                                                                  "predicted_depth max abs diff"))
    assert kit_line.endswith("FAIL") and "FAILED" in lines
    report = json.loads((tmp_path / "bad.json").read_text())
    assert not report["passed"] and not report["kits"][0]["passed"]
    # the PyTorch parity itself still passed: the kit alone failed the check
    assert all(r["passed"] for r in report["images"])


def test_check_on_trt_without_tensorrt_says_what_to_install(tiny_bundle):
    from conftest import assert_clean_error, run_cli

    from depthrt.backends.trt import load_tensorrt

    if load_tensorrt("trt") is not None:
        pytest.skip("TensorRT is installed here: the trt kit runs for real (GPU machines)")
    bundle, _ = tiny_bundle("depth-anything-v2-small")
    result = run_cli("check", str(bundle), "--backend", "trt")
    assert_clean_error(result, "Polygraphy's TensorRT runner", "pip install 'depthrt[trt]'")


def test_fp16_variants_added_later_get_the_fp16_tolerances(tiny_bundle, tmp_path):
    from depthrt.manifest import read_manifest, write_json_atomic
    from depthrt_export.fp16 import add_fp16_variants

    bundle, manifest = tiny_bundle("depth-anything-v2-small")
    copy = _copy(bundle, tmp_path / "bundle")
    stripped = {**manifest, "graphs": [g for g in manifest["graphs"] if g.get("precision", "fp32") == "fp32"]}
    write_json_atomic(copy / "manifest.json", stripped)
    (copy / "model.fp16.onnx").unlink()
    add_fp16_variants(copy)
    by_precision = {g.get("precision", "fp32"): g["parity_kit"] for g in read_manifest(copy)["graphs"]}
    assert by_precision["fp16"]["inputs"] == by_precision["fp32"]["inputs"]
    assert by_precision["fp16"]["tolerances"]["predicted_depth"]["rtol"] == kit.LIMITS["fp16"]
    assert by_precision["fp32"]["tolerances"]["predicted_depth"]["rtol"] == kit.LIMITS["fp32"]


def test_the_fp16_weight_storage_unet_of_sdxl_sized_lbm_has_a_passing_kit(tmp_path, monkeypatch):
    """LBM's low-memory UNet export (fp16-stored weights, its own export path) writes its kit too."""
    pytest.importorskip("yaml")
    from diffusion_bundles import write_bundle

    from depthrt.manifest import read_manifest
    from depthrt_export.diffusion import lbm as lbm_export
    from depthrt_export.diffusion.tiny_lbm import write_tiny_lbm

    monkeypatch.setattr(lbm_export, "UNET_FP32_LIMIT", 0)  # the SDXL-sized path, on the tiny model
    bundle = write_bundle(lbm_export, "lbm-depth", write_tiny_lbm("lbm-depth", tmp_path / "ckpt", seed=0),
                          tmp_path / "bundle")
    manifest = read_manifest(bundle)
    assert manifest["loop"]["unet_weights"] == "float16"
    rows = kit.check_kits(bundle, manifest, "ort-cpu", "fp32")
    assert [r["graph"] for r in rows] == ["vae_encoder", "unet", "vae_decoder"]
    assert all(r["passed"] for r in rows), rows


def test_the_printed_trt_command_gives_the_kit_shapes_as_the_engine_profile(tiny_bundle, capsys):
    bundle, manifest = tiny_bundle("da3-mono-large")
    (fp32, *_rest) = _printed(bundle, capsys, "--trt")
    shapes = manifest["graphs"][0]["parity_kit"]["input_shapes"]
    assert "--trt" in fp32 and "--onnxrt" not in fp32
    assert fp32[fp32.index("--input-shapes") + 1] == f"pixel_values:[{','.join(map(str, shapes['pixel_values']))}]"
    atols = fp32[fp32.index("--atol") + 1: fp32.index("--rtol")]
    assert [a.split(":")[0] for a in atols] == ["depth", "sky"]  # one tolerance per output
