"""Ctrl-C twice during `depthrt video` to a file (stop at once, dropping the frames in flight): the output is
still a finalised, playable video holding every frame the run reports. Once is
tests/test_video.py::test_ctrl_c_finalises_output_and_stats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("cv2", reason="depthrt video needs OpenCV: pip install 'depthrt[video]'")

from test_video import count_frames, make_clip  # noqa: E402


def test_ctrl_c_twice_still_leaves_a_playable_finalised_file(tiny_bundle, tmp_path):
    clip = make_clip(tmp_path / "long.mp4", 1500)
    out, stats = tmp_path / "out.mp4", tmp_path / "s.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DEPTHRT_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "depthrt.cli", "video", str(tiny_bundle("depth-anything-v2-small")[0]),
                             "--input", str(clip), "--out", str(out), "--stats", str(stats), "--headless",
                             "--backend", "ort-cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    started = proc.stderr.readline()  # the start line comes once the model is loaded
    assert "Ctrl-C to stop" in started, started + proc.stderr.read()
    time.sleep(1.5)  # some frames in
    for _ in range(2):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    s = json.loads(stats.read_text())
    assert s["stopped_by"] == "interrupt" and 0 < s["frames"]["out"] < 1500
    assert count_frames(out)[0] == s["frames"]["out"]  # OpenCV reads every reported frame back
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary file left beside it
