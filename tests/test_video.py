"""`depthrt video`: pipelined depth for files, cameras and streams; its outputs, stats and bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, assert_clean_error, run_cli

cv2 = pytest.importorskip("cv2", reason="depthrt video needs OpenCV: pip install 'depthrt[video]'")

from depthrt.errors import BackendError, InputError, OutputError  # noqa: E402
from depthrt.samples import synthetic_image  # noqa: E402
from depthrt.video.overlay import bgr_lut, colorize, compose  # noqa: E402
from depthrt.video.pipeline import Pipeline, VideoOptions  # noqa: E402
from depthrt.video.smoothing import RangeSmoother  # noqa: E402
from depthrt.video.writer import VideoWriter  # noqa: E402

CPU = ("--backend", "ort-cpu")


@pytest.fixture()
def bundle(tiny_bundle):
    return tiny_bundle("depth-anything-v2-small")[0]


def make_clip(path: Path, frames: int, width: int = 160, height: int = 120, fourcc: str = "mp4v") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25.0, (width, height))
    assert writer.isOpened()
    base = synthetic_image(height, width, 0)[:, :, ::-1]
    for i in range(frames):  # shifting content: every frame differs
        writer.write(np.ascontiguousarray(np.roll(base, 3 * i, axis=1)))
    writer.release()
    return path


def count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} does not open as a video"
    n, size = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n, size = n + 1, frame.shape[:2]
    cap.release()
    return n, size


# --------------------------------------------------------------------------- acceptance
def test_37_frame_clip_gives_37_frame_video_and_stats(bundle, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", 37)
    out, stats = tmp_path / "out.mp4", tmp_path / "s.json"
    result = run_cli("video", str(bundle), "--input", str(clip), "--out", str(out), "--headless",
                     "--stats", str(stats), *CPU)
    assert result.returncode == 0, result.stderr
    assert count_frames(out) == (37, (120, 160))
    s = json.loads(stats.read_text())
    assert s["frames"] == {"in": 37, "out": 37, "dropped": 0, "dropped_stale": 0}
    assert s["fps"] > 0 and s["stopped_by"] == "end of stream" and s["backend"] == "ort-cpu"
    for stage in ("capture", "preprocess", "inference", "postprocess", "output", "end_to_end"):
        lat = s["latency_ms"][stage]
        assert lat["count"] == 37 and 0 <= lat["median"] <= lat["p90"], stage
    assert "37 frame(s) written" in result.stdout
    # never overwrite without --force; with it, the file is replaced
    again = run_cli("video", str(bundle), "--input", str(clip), "--out", str(out), "--headless", *CPU)
    assert_clean_error(again, "refusing to overwrite", "--force")
    again = run_cli("video", str(bundle), "--input", str(clip), "--out", str(out), "--headless", "--force",
                    "--view", "side-by-side", "--resolution", "168", "--smooth", "0.3", "--stats", str(stats), *CPU)
    assert again.returncode == 0, again.stderr
    assert count_frames(out) == (37, (120, 320))  # side by side: twice as wide
    s = json.loads(stats.read_text())
    assert s["processing_size"] == [126, 168] and s["smooth"] == 0.3  # DPT rule: the scale closer to 1 wins


def test_camera_that_does_not_exist_is_a_clear_error(bundle, tmp_path):
    result = run_cli("video", str(bundle), "--camera", "7", "--headless", "--out", str(tmp_path / "o.mp4"))
    assert_clean_error(result, "camera", "7")
    assert not (tmp_path / "o.mp4").exists()


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name, content, needle", [
    ("notes.mp4", b"this is not a video\n" * 50, "not a video"),
    ("empty.mp4", b"", "empty"),
    ("missing.mp4", None, "not found"),
    ("photo.png", "png", "is an image"),
])
def test_unreadable_inputs_are_clear_errors(bundle, tmp_path, name, content, needle):
    path = tmp_path / name
    if content == "png":
        cv2.imwrite(str(path), synthetic_image(32, 32, 0))
    elif content is not None:
        path.write_bytes(content)
    result = run_cli("video", str(bundle), "--input", str(path), "--headless", "--out", str(tmp_path / "o.mp4"))
    assert_clean_error(result, needle)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # no OpenCV/FFmpeg log lines


def test_bad_outputs_and_options_fail_before_any_work(bundle, tmp_path):
    from depthrt.video import run

    clip = make_clip(tmp_path / "clip.mp4", 3)
    cases = [
        (dict(out=str(tmp_path / "no" / "such" / "dir.mp4")), OutputError, "does not exist"),
        (dict(out=str(tmp_path)), OutputError, "is a directory"),
        (dict(out=str(tmp_path / "o.gif")), OutputError, "unsupported file type"),
        (dict(stats=str(clip)), OutputError, "refusing to overwrite"),
        (dict(smooth=1.5), InputError, "--smooth"),
        (dict(resolution=6, out=str(tmp_path / "o.mp4")), InputError, "a larger --resolution"),  # no 14-px patch
        (dict(view="mirror"), InputError, "--view"),
    ]
    for kwargs, error, needle in cases:
        with pytest.raises(error, match=needle):
            run(bundle, input=str(clip), headless=True, backend="ort-cpu", **kwargs)
    assert not (tmp_path / "o.mp4").exists()


def test_window_without_a_display_is_a_clear_error(bundle, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", 2)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run([sys.executable, "-m", "depthrt.cli", "video", str(bundle), "--input", str(clip)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert_clean_error(result, "--headless")


def test_missing_opencv_names_the_extra(monkeypatch):
    from depthrt.video import opencv

    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    with pytest.raises(BackendError, match=r"depthrt\[video\]"):
        opencv.cv2()


def test_truncated_file_keeps_what_could_be_read(bundle, tmp_path):
    clip = make_clip(tmp_path / "clip.avi", 30, fourcc="MJPG")
    data = clip.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])  # the stream breaks off mid-way, index lost
    out = tmp_path / "out.mp4"
    result = run_cli("video", str(bundle), "--input", str(cut), "--out", str(out), "--headless", *CPU)
    assert result.returncode == 0, result.stderr
    n, _ = count_frames(out)
    assert 5 <= n < 30  # what was readable, in a playable file


# --------------------------------------------------------------------------- pipeline behaviour
class FakeSource:
    """A source of numbered frames (the index is painted into pixel (0, 0))."""

    def __init__(self, frames: int, live: bool, interval: float = 0.0, fail: str | None = None):
        self.frames, self.live, self.interval, self.fail = frames, live, interval, fail
        self.width, self.height, self.fps, self.frame_count = 64, 48, 25.0, None if live else frames
        self.name, self.label, self.failure, self.warning = "fake", "fake", None, None
        self.i = 0

    def read(self):
        if self.i >= self.frames:
            self.failure = self.fail
            return None
        time.sleep(self.interval)
        frame = np.zeros((self.height, self.width, 3), np.uint8)
        frame[0, 0] = (0, self.i // 256, self.i % 256)  # BGR: the model sees (i % 256, i // 256, 0)
        self.i += 1
        return frame

    def close(self):
        pass


class FakeModel:
    """Stage API of depthrt.video.stages.FrameModel; depth = the frame index, inference takes ``delay``."""

    kind, units = "relative_inverse_depth", "none"

    def __init__(self, delay: float = 0.0):
        self.delay, self.seen = delay, []

    def preprocess(self, rgb):
        return rgb.astype(np.float32).transpose(2, 0, 1), {"input_size": list(rgb.shape[:2])}

    def infer(self, batch):
        time.sleep(self.delay)
        index = int(batch[0, 0, 0, 0]) + 256 * int(batch[0, 1, 0, 0])
        self.seen.append(index)
        return np.full((1, 4, 4), float(index), np.float32)

    def to_depth(self, out, meta, size):
        return cv2.resize(out, size[::-1])


class ListWriter:
    def __init__(self):
        self.frames = []

    def write(self, image):
        self.frames.append(image)

    def close(self):
        return "list"


def test_file_source_processes_every_frame_in_order():
    model, writer = FakeModel(delay=0.002), ListWriter()
    result = Pipeline(model, FakeSource(25, live=False), writer, VideoOptions()).run()
    assert result.error is None and result.stopped_by == "end of stream"
    assert model.seen == list(range(25)) and len(writer.frames) == 25
    assert result.stats.frames_in == result.stats.frames_out == 25 and result.stats.dropped == 0


def test_live_source_drops_stale_frames_and_processes_the_newest():
    # inference is ~30x slower than capture: wide margins, so a loaded machine (slow sleeps) still drops
    model, writer = FakeModel(delay=0.06), ListWriter()
    source = FakeSource(60, live=True, interval=0.002)
    result = Pipeline(model, source, writer, VideoOptions()).run()
    s = result.stats
    assert result.error is None and s.frames_in == 60
    assert 2 <= s.frames_out < 30 and s.dropped > 0
    assert model.seen == sorted(model.seen) and len(set(model.seen)) == len(model.seen)
    gaps = np.diff(model.seen)
    assert gaps.max() > 5  # frames were skipped, not queued: the processed frame is a recent one
    assert s.summary()["frames"]["dropped"] == 60 - s.frames_out


def test_stream_that_drops_midway_keeps_a_playable_file(tmp_path):
    out = tmp_path / "live.mp4"
    source = FakeSource(12, live=True, fail="stream 'fake' stopped delivering frames after 12 frame(s)")
    result = Pipeline(FakeModel(), source, VideoWriter(out, 25.0), VideoOptions()).run()
    assert result.stopped_by == "stream failure" and result.output == out
    n, _ = count_frames(out)
    assert n == result.stats.frames_out >= 1


def test_error_in_a_stage_stops_cleanly_and_keeps_the_output(tmp_path):
    # The stages run in threads: without a hand-off the failure could come before the writer saw any
    # frame (then there is rightly no file). The failing inference waits until one frame is written.
    written = threading.Event()

    class Writer(VideoWriter):
        def write(self, frame):
            super().write(frame)
            written.set()

    class Broken(FakeModel):
        def infer(self, batch):
            if len(self.seen) == 5:
                assert written.wait(60), "the writer never received a frame"
                raise BackendError("ort-cpu failed to run the graph: out of memory")
            return super().infer(batch)

    out = tmp_path / "o.mp4"
    result = Pipeline(Broken(), FakeSource(20, live=False), Writer(out, 25.0), VideoOptions()).run()
    assert isinstance(result.error, BackendError) and result.stopped_by == "error"
    assert 1 <= count_frames(out)[0] == result.stats.frames_out <= 5


def test_error_before_any_frame_is_written_leaves_no_file(tmp_path):
    class Broken(FakeModel):
        def infer(self, batch):
            raise BackendError("ort-cpu failed to run the graph: out of memory")

    out = tmp_path / "o.mp4"
    result = Pipeline(Broken(), FakeSource(20, live=False), VideoWriter(out, 25.0), VideoOptions()).run()
    assert isinstance(result.error, BackendError) and result.stats.frames_out == 0
    assert result.output is None and list(tmp_path.iterdir()) == []


def interrupted_video_run(bundle: Path, tmp_path: Path, times: int = 1, timeout: float = 60):
    """`depthrt video` of a 1500-frame clip to a file, sent Ctrl-C ``times`` times (50 ms apart) 1.5 s
    after its start line; -> (exit code, stderr, output video, stats JSON)."""
    clip = make_clip(tmp_path / "long.mp4", 1500)
    out, stats = tmp_path / "out.mp4", tmp_path / "s.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DEPTHRT_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "depthrt.cli", "video", str(bundle), "--input", str(clip),
                             "--out", str(out), "--stats", str(stats), "--headless", *CPU],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    started = proc.stderr.readline()  # the start line comes once the model is loaded
    assert "Ctrl-C to stop" in started, started + proc.stderr.read()
    time.sleep(1.5)  # some frames in
    for n in range(times):
        if n:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stderr, out, stats


def test_ctrl_c_finalises_output_and_stats(bundle, tmp_path):
    returncode, stderr, out, stats = interrupted_video_run(bundle, tmp_path)
    assert returncode == 130, stderr  # a file cut short
    assert "Traceback" not in stderr
    s = json.loads(stats.read_text())
    assert s["stopped_by"] == "interrupt" and 0 < s["frames"]["out"] < 1500
    assert count_frames(out)[0] == s["frames"]["out"]


# --------------------------------------------------------------------------- colours and smoothing
def test_colours_put_near_at_the_warm_end_for_every_kind():
    lut = bgr_lut("turbo")
    ramp = np.linspace(0, 10, 64, dtype=np.float32)[None].repeat(4, 0)  # left small, right large
    inverse = colorize(ramp, 0.0, 10.0, "relative_inverse_depth", lut)  # larger = nearer
    metric = colorize(ramp, 0.0, 10.0, "metric_depth", lut)  # larger = farther
    hot, cold = lut[255, 0], lut[0, 0]  # turbo's warm (near) and cold (far) ends, BGR
    np.testing.assert_array_equal(inverse[0, [0, -1]], [cold, hot])
    np.testing.assert_array_equal(metric[0, [0, -1]], [hot, cold])
    assert inverse[0, 32, 2] > inverse[0, 16, 2]  # more red towards the near end
    # values outside the range clamp to its ends (no wrap-around)
    clamped = colorize(np.float32([[-5, 20]]), 0.0, 10.0, "relative_inverse_depth", lut)
    np.testing.assert_array_equal(clamped[0], lut[[0, 255], 0])
    frame = np.full(inverse.shape, 200, np.uint8)
    assert compose("side-by-side", frame, inverse).shape == (4, 128, 3)
    assert compose("overlay", frame, inverse).shape == inverse.shape


def test_smoothing_averages_the_range_over_time():
    rng = np.random.default_rng(0)
    frames = [rng.random((50, 50)).astype(np.float32) * s for s in (1.0, 3.0, 3.0, 3.0)]
    plain = RangeSmoother()
    assert plain(frames[1]) == (float(frames[1].min()), float(frames[1].max()))
    smooth = RangeSmoother(0.5)
    his = [smooth(f)[1] for f in frames]
    assert his[0] == pytest.approx(np.percentile(frames[0], 98), rel=0.05)
    target = np.percentile(frames[1], 98)
    assert his[0] < his[1] < his[2] < his[3] < target  # approaches the new range step by step
    assert his[1] == pytest.approx((his[0] + target) / 2, rel=0.05)
    with pytest.raises(InputError):
        RangeSmoother(0.0)


def test_video_package_does_not_import_opencv_until_used():
    code = "import depthrt, depthrt.video, sys; print('cv2' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_warm_up_leaves_the_fast_path_ready(bundle):
    pytest.importorskip("openvino")
    import depthrt
    from depthrt.video.stages import FrameModel

    model = FrameModel(depthrt.load(bundle, backend="openvino"))
    model.warm_up(120, 160)
    h, w = model.model_size(120, 160)
    # OpenVINO fp32 compiles a shape's own model on its second run: the stream's frames start on it
    assert ((1, 3, h, w),) in model.est.runner._compiled
