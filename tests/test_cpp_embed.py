"""The C++ embedding example (scripts/cpp): built with scripts/build-cpp-example, run on a tiny bundle.

Its depth must equal ``depthrt.load(B).predict(img).depth`` bit for bit, and a bad bundle or image
must end it with the Python error's message on stderr and a non-zero exit, never a signal.
Skipped, with the reason, where cmake, a C++ compiler or pybind11 is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import depthrt
from depthrt.imageio import read_image, write_depth_png16

from conftest import ROOT

PRESET = "depth-anything-v2-small"


def _missing_tools() -> str | None:
    if shutil.which("cmake") is None:
        return "cmake is not installed"
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler (c++, g++ or clang++) on PATH"
    if importlib.util.find_spec("pybind11") is None:
        return "pybind11 is not installed (pip install pybind11)"
    return None


@pytest.fixture(scope="module")
def example(tmp_path_factory, tiny_bundle):
    """(program, bundle, image): the example built in a temporary folder, a tiny bundle, a small image."""
    missing = _missing_tools()
    if missing:
        pytest.skip(f"C++ embedding example not built: {missing}")
    build_dir = tmp_path_factory.mktemp("cpp-build")
    env = {**os.environ, "PYTHON": sys.executable, "DEPTHRT_CPP_BUILD_DIR": str(build_dir)}
    # The compile runs while the bundle is exported (when no other test has exported it yet).
    build = subprocess.Popen([str(ROOT / "scripts" / "build-cpp-example")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        bundle, _ = tiny_bundle(PRESET)
    finally:
        out, err = build.communicate(timeout=600)
    assert build.returncode == 0, err
    program = Path(out.strip().splitlines()[-1])
    assert program.is_file() and os.access(program, os.X_OK), out
    # An odd size, so strides and the resize back to the input size are exercised.
    image = tmp_path_factory.mktemp("cpp-image") / "frame.png"
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (121, 163, 3), dtype=np.uint8)).save(image)
    return program, bundle, image


def run(program: Path, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("DEPTHRT_PYTHON", "PYTHONHOME")}
    full_env["DEPTHRT_PYTHON"] = sys.executable  # the test's own environment, wherever it lives
    full_env.update(env or {})
    return subprocess.run([str(program), *map(str, args)], capture_output=True, text=True, env=full_env,
                          timeout=300)


def assert_failed_cleanly(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode > 0, f"exit {result.returncode} (negative: killed by a signal)\n{result.stderr}"
    assert result.stderr.strip().splitlines()[-1] == f"depthrt_embed: error: {message}", result.stderr


@pytest.fixture(scope="module")
def expected(example):
    """expected(backend) -> (backend picked, depth): what the Python API gives for the same bundle and image."""
    _, bundle, image = example
    made: dict[str, tuple[str, np.ndarray]] = {}

    def predict(backend: str) -> tuple[str, np.ndarray]:
        if backend not in made:
            est = depthrt.load(bundle, backend=backend)
            made[backend] = est.backend, est.predict(read_image(image)).depth
        return made[backend]

    return predict


@pytest.mark.parametrize("suffix, flags", [
    (".npy", []),                                    # backend auto, depth borrowed, main thread
    (".f32", ["--backend", "ort-cpu", "--own"]),     # depth copied into a C++-owned buffer
    (".npy", ["--backend", "ort-cpu", "--thread"]),  # frames on a second C++ thread (GIL hand-over)
])
def test_depth_equals_python_api_bit_for_bit(example, expected, tmp_path, suffix, flags):
    program, bundle, image = example
    backend, depth = expected(flags[1] if flags else "auto")
    out = tmp_path / f"depth{suffix}"
    result = run(program, bundle, image, out, *flags)
    assert result.returncode == 0, result.stderr
    assert f"backend {backend}:" in result.stdout
    got = np.load(out) if suffix == ".npy" else np.fromfile(out, dtype="<f4").reshape(depth.shape)
    assert got.dtype == np.float32 and got.shape == depth.shape
    assert got.tobytes() == depth.tobytes()


def test_png_output_is_the_runtime_png(example, expected, tmp_path):
    program, bundle, image = example
    result = run(program, bundle, image, tmp_path / "depth.png", "--backend", "ort-cpu")
    assert result.returncode == 0, result.stderr
    reference = write_depth_png16(tmp_path / "reference.png", expected("ort-cpu")[1])
    got, want = (np.asarray(Image.open(p)) for p in (tmp_path / "depth.png", reference))
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_repeat_reports_both_medians(example, tmp_path):
    program, bundle, image = example
    result = run(program, bundle, image, tmp_path / "depth.f32", "--backend", "ort-cpu", "--repeat", "4",
                 "--compare")
    assert result.returncode == 0, result.stderr
    assert "per-frame median over 3 frames" in result.stdout
    assert "predict() called from Python in this process" in result.stdout
    assert "embedding round trip alone" in result.stdout


def test_missing_bundle_gives_the_python_message(example, tmp_path):
    program, _, image = example
    missing = tmp_path / "no-such-bundle"
    with pytest.raises(depthrt.BundleError) as info:
        depthrt.load(missing)
    result = run(program, missing, image, tmp_path / "depth.npy")
    assert_failed_cleanly(result, str(info.value))
    assert not (tmp_path / "depth.npy").exists()


def test_unreadable_image_gives_the_python_message(example, tmp_path):
    program, bundle, _ = example
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a PNG file\n")
    with pytest.raises(depthrt.InputError) as info:
        read_image(bad)
    result = run(program, bundle, bad, tmp_path / "depth.npy")
    assert_failed_cleanly(result, str(info.value))


def test_existing_output_is_refused_before_any_work(example, tmp_path):
    program, bundle, image = example
    out = tmp_path / "depth.npy"
    out.write_bytes(b"keep me")
    result = run(program, bundle, image, out)
    assert_failed_cleanly(result, f"refusing to overwrite existing file '{out}'; pass --force or choose another --out")
    assert out.read_bytes() == b"keep me"


def test_python_without_depthrt_is_named(example, tmp_path):
    program, bundle, image = example
    result = run(program, bundle, image, tmp_path / "depth.npy", env={"DEPTHRT_PYTHON": str(tmp_path / "python")})
    assert result.returncode > 0
    assert f"Python '{tmp_path / 'python'}' does not exist" in result.stderr


# ------------------------------------------------- depthrt.embed itself (no compiler needed)

def test_embed_reads_a_strided_read_only_frame_and_keeps_no_reference(tiny_bundle):
    from depthrt import embed

    bundle, _ = tiny_bundle(PRESET)
    est = embed.load(bundle, backend="ort-cpu")
    rng = np.random.default_rng(3)
    pitched = rng.integers(0, 256, (90, 140, 3), dtype=np.uint8)  # a row pitch wider than the frame
    frame = pitched[:, :131]
    frame.setflags(write=False)
    before = sys.getrefcount(frame)
    depth = embed.predict_depth(est, frame)
    assert sys.getrefcount(frame) == before
    assert depth.dtype == np.float32 and depth.flags.c_contiguous and depth.shape == (90, 131)
    assert depth.tobytes() == est.predict(np.ascontiguousarray(frame)).depth.tobytes()
    out = np.full((90, 131), np.nan, dtype=np.float32)
    embed.predict_into(est, frame, out)
    assert out.tobytes() == depth.tobytes()
    with pytest.raises(depthrt.InputError, match=r"float32 of shape \(90, 131\)"):
        embed.predict_into(est, frame, np.zeros((90, 130), np.float32))


def test_embed_output_format_fails_early(tmp_path):
    from depthrt import embed

    with pytest.raises(depthrt.OutputError, match="unknown extension '.jpg'; use one of .png, .npy, .f32"):
        embed.output_format(tmp_path / "depth.jpg")
    existing = tmp_path / "depth.f32"
    existing.write_bytes(b"")
    assert embed.output_format(existing) == ".f32"
    with pytest.raises(depthrt.OutputError, match="refusing to overwrite"):
        embed.output_format(existing, overwrite=False)
