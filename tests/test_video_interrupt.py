"""Ctrl-C twice during `depthrt video` to a file (stop at once, dropping the frames in flight): the output is
still a finalised, playable video holding every frame the run reports. Once is
tests/test_video.py::test_ctrl_c_finalises_output_and_stats."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("cv2", reason="depthrt video needs OpenCV: pip install 'depthrt[video]'")

from test_video import count_frames, interrupted_video_run  # noqa: E402


def test_ctrl_c_twice_still_leaves_a_playable_finalised_file(tiny_bundle, tmp_path):
    returncode, stderr, out, stats = interrupted_video_run(tiny_bundle("depth-anything-v2-small")[0], tmp_path,
                                                           times=2, timeout=120)
    assert returncode == 130 and "Traceback" not in stderr, stderr
    s = json.loads(stats.read_text())
    assert s["stopped_by"] == "interrupt" and 0 < s["frames"]["out"] < 1500
    assert count_frames(out)[0] == s["frames"]["out"]  # OpenCV reads every reported frame back
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary file left beside it
