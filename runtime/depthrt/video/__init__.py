"""Real-time depth for video files, cameras and streams (``depthrt video``).

    >>> from depthrt import video
    >>> result = video.run("bundles/depth-anything-v2-small", input="clip.mp4", out="depth.mp4",
    ...                    headless=True, resolution=266)
    >>> result.stats.fps()

Capture, preprocessing, inference, colour mapping and output run concurrently (see
:mod:`depthrt.video.pipeline`). Needs OpenCV (``pip install 'depthrt[video]'``), imported only
when a video is run, so ``import depthrt`` stays lean.
"""

from __future__ import annotations

import os
import sys

from ..errors import BackendError, InputError
from .overlay import VIEWS, check_view
from .pipeline import Pipeline, RunResult, VideoOptions
from .smoothing import check_alpha
from .stats import to_json

__all__ = ["run", "VIEWS", "VideoOptions", "RunResult", "Pipeline"]


def _check_display() -> None:
    from .opencv import cv2

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise InputError("no display to show the video on (DISPLAY is not set); pass --headless "
                         "(with --out FILE to save the result)")
    cv = cv2()
    try:
        cv.namedWindow("depthrt video", cv.WINDOW_NORMAL)
        cv.destroyWindow("depthrt video")
    except cv.error:
        raise BackendError("this OpenCV build has no window support (opencv-python-headless); pass --headless, "
                           "or pip install opencv-python to see a window") from None


def run(bundle, *, input: str | None = None, camera: int | None = None, out: str | None = None,
        stats: str | None = None, headless: bool = False, backend: str = "auto", precision: str = "fp32",
        view: str = "depth", cmap: str = "turbo", smooth: float | None = None, resolution: int | None = None,
        threads: int | None = None, max_frames: int | None = None, force: bool = False,
        progress: bool = True, log=None) -> RunResult:
    """Run a bundle over a video file/URL (``input``) or a camera (``camera`` index).

    Everything the user got wrong fails before the model is loaded. Returns the
    :class:`RunResult`; its ``error`` (if any) is raised by the caller after reporting, because
    the output and the statistics are kept either way. ``stats`` is written here.
    """
    from ..estimator import load
    from ..imageio import COLORMAPS, _atomic_write
    from .capture import open_camera, open_input
    from .stages import FrameModel
    from .writer import VideoWriter, check_output

    say = log or (lambda message: print(message, file=sys.stderr))
    if (input is None) == (camera is None):
        raise InputError("give exactly one source: --input FILE|URL or --camera N")
    check_view(view)
    check_alpha(smooth)
    if cmap not in COLORMAPS:
        raise InputError(f"--cmap {cmap!r}: choose one of {', '.join(COLORMAPS)}")
    if max_frames is not None and max_frames < 1:
        raise InputError(f"--max-frames {max_frames}: give at least 1")
    if headless and out is None and stats is None:
        say("[depthrt] note: --headless without --out or --stats shows and saves nothing (a dry run)")
    if out is not None:
        check_output(out, force)
    if stats is not None:
        check_output(stats, force, what="--stats", suffixes=())
        if out is not None and os.path.abspath(out) == os.path.abspath(stats):
            raise InputError("--out and --stats name the same file; give them different names")
    source = open_camera(camera) if camera is not None else open_input(input)
    try:
        if not headless:
            _check_display()
        est = load(bundle, backend=backend, precision=precision, threads=threads)
        model = FrameModel(est, resolution)
        mh, mw = model.check_frame_size(source.height, source.width)
        model.warm_up(source.height, source.width)
    except BaseException:
        source.close()
        raise
    kind = "live" if source.live else (f"{source.frame_count} frames" if source.frame_count else "file")
    say(f"[depthrt] {source.label} ({source.width}x{source.height}, {source.fps:g} fps, {kind}) -> "
        f"{out or ('window' if not headless else 'nothing')}; {est.manifest['model']['name']} on {est.backend} "
        f"({precision}) at {mw}x{mh}; Ctrl-C to stop")
    writer = VideoWriter(out, source.fps, force=force) if out is not None else None
    options = VideoOptions(view=view, cmap=cmap, smooth=smooth, headless=headless, max_frames=max_frames,
                           label=f"{est.backend} {precision}  {mw}x{mh}", progress=progress)
    result = Pipeline(model, source, writer, options).run()
    result.summary = result.stats.summary(
        source={"name": source.name, "live": source.live, "width": source.width, "height": source.height,
                "fps": source.fps, "frame_count": source.frame_count},
        output=str(result.output) if result.output else None,
        model=est.manifest["model"]["name"], backend=est.backend, precision=precision,
        processing_size=[mh, mw], view=view, smooth=smooth, stopped_by=result.stopped_by,
        error=str(result.error) if result.error else (source.failure or None),
    )
    if stats is not None:
        _atomic_write(stats, lambda f: f.write(to_json(result.summary).encode()), overwrite=force)
    return result
