"""Fuzzing the video reader: truncated, damaged or fake video files open and read cleanly or fail with one InputError.

Each case cuts a small clip (MP4/mp4v, AVI/MJPG, MKV) at a random byte, flips bytes in it, or
replaces it with random bytes, then opens it as ``depthrt video`` does (``open_input``) and reads
every frame under a time bound. The outcome must be an InputError at open, or uint8 BGR frames all of
one size (a reader that stops: never a hang, never frames of changing sizes).
One end-to-end run of the CLI on a truncated clip checks the output and the warning.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from fuzzing import bounded, clear_error, examples, fuzz_summary, record  # noqa: F401  (fixture)
from hypothesis import given
from hypothesis import strategies as st

cv2 = pytest.importorskip("cv2", reason="depthrt video needs OpenCV: pip install 'depthrt[video]'")

from conftest import run_cli  # noqa: E402

from depthrt.errors import InputError  # noqa: E402
from depthrt.samples import synthetic_image  # noqa: E402
from depthrt.video.capture import open_input  # noqa: E402

TMP = Path(tempfile.mkdtemp(prefix="depthrt-fuzz-video-"))
FRAMES, W, H = 12, 64, 48
CONTAINERS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}


def write_clip(path: Path, frames: int = FRAMES) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*CONTAINERS[path.suffix]), 25.0, (W, H))
    base = synthetic_image(H, W, 0)[:, :, ::-1]
    for i in range(frames):
        writer.write(np.ascontiguousarray(np.roll(base, 4 * i, axis=1)))
    writer.release()
    return path


CLIPS = {suffix: write_clip(TMP / f"clip{suffix}").read_bytes() for suffix in CONTAINERS}


def read_all(data: bytes, suffix: str, test: str) -> None:
    path = TMP / f"case{suffix}"
    path.write_bytes(data)
    try:
        with bounded(30):
            source = open_input(str(path))
            frames = []
            try:
                while (frame := source.read()) is not None:
                    frames.append(frame)
                    assert len(frames) <= 10 * FRAMES, "the reader does not stop"
            finally:
                source.close()
    except InputError as exc:
        clear_error(test, exc)
        return
    assert frames and all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in frames)
    assert len({f.shape for f in frames}) == 1, "frames of several sizes"
    record(test, f"{'all' if len(frames) >= FRAMES else 'some'} frames read")


@examples(40)
@given(st.sampled_from(sorted(CLIPS)), st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_videos_read_their_first_frames_or_fail_clearly(suffix, keep):
    data = CLIPS[suffix]
    read_all(data[:max(1, int(len(data) * keep))], suffix, "video: truncated")


@examples(40)
@given(st.sampled_from(sorted(CLIPS)), st.data())
def test_damaged_videos_read_or_fail_clearly(suffix, data):
    damaged = bytearray(CLIPS[suffix])
    for _ in range(data.draw(st.integers(1, 16))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    read_all(bytes(damaged), suffix, "video: flipped bytes")


@examples(20)
@given(st.binary(min_size=1, max_size=2000), st.sampled_from(sorted(CLIPS)))
def test_random_bytes_named_as_video_fail_clearly(noise, suffix):
    read_all(noise, suffix, "video: random bytes")


def test_cli_on_a_truncated_mp4_writes_what_it_read_and_warns(tiny_bundle, tmp_path):
    clip = write_clip(tmp_path / "long.mp4", 60)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[:int(clip.stat().st_size * 0.5)])
    out = tmp_path / "out.mp4"
    result = run_cli("video", str(tiny_bundle("depth-anything-v2-small")[0]), "--input", str(cut), "--out",
                     str(out), "--headless", "--backend", "ort-cpu")
    if result.returncode != 0:  # the cut removed what OpenCV needs to open it: one clear line
        assert "Traceback" not in result.stderr and "error:" in result.stderr.splitlines()[-1], result.stderr
        assert not out.exists()
        return
    cap = cv2.VideoCapture(str(out))
    written = 0
    while cap.read()[0]:
        written += 1
    cap.release()
    assert 0 < written < 60 and f"{written} frame(s) written" in result.stdout, result.stdout + result.stderr
