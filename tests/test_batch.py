"""`depthrt batch` on one machine: mirrored outputs, resume after kill -9, per-file failures, bad input."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from batch_images import BAD, bundle, expected_outputs, files_under, make_tree, reference  # noqa: F401 (fixtures)
from conftest import assert_clean_error, run_cli
from PIL import Image

from depthrt import batch
from depthrt.batch.listing import list_inputs, make_jobs
from depthrt.errors import InputError, OutputError

CPU = ("--backend", "ort-cpu")


def test_batch_mirrors_the_tree_reports_bad_files_and_skips_finished_ones(reference, bundle, tmp_path):
    root, out, images, files = reference
    assert {out / rel for rel in files if rel != "errors.jsonl"} == expected_outputs(root, images, out)
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["relative"] for e in errors) == sorted(BAD)
    assert all("cannot read image" in e["error"] and e["path"].startswith(str(root)) for e in errors)
    # The maps are predict's, byte for byte.
    from depthrt.cli import main

    single = tmp_path / "predict"
    assert main(["predict", str(bundle), str(images[7]), "--out", str(single), *CPU]) == 0
    for name in (images[7].stem + ".depth.png", images[7].stem + ".color.png"):
        assert (single / name).read_bytes() == files[images[7].relative_to(root).parent.joinpath(name).as_posix()]

    again = run_cli("batch", str(bundle), str(root), "--out", str(out), *CPU)
    assert again.returncode == 1, again.stderr  # the two bad files still fail
    assert f"{len(images)} of {len(images) + len(BAD)} image(s) already done" in again.stderr
    assert f"0 done, {len(images)} skipped (already done), {len(BAD)} failed" in again.stdout
    assert "Traceback" not in again.stderr and "images/s" in again.stderr
    assert files_under(out) == files  # nothing rewritten


def test_kill_9_mid_run_then_rerun_completes_every_map_exactly_once(reference, bundle, tmp_path):
    root, ref_out, images, ref_files = reference
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "depthrt.cli", "batch", str(bundle), str(root), "--out", str(out), *CPU,
           "--batch-size", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while len(list(out.rglob("*.color.png"))) < 20 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = files_under(out)
    finished = {rel for rel in partial if not rel.rsplit("/", 1)[-1].startswith(".")}
    assert 0 < len(finished) < len(ref_files)
    for rel in finished:  # every map under its final name is complete: the same bytes as the full run
        assert partial[rel] == ref_files[rel], rel

    rerun = run_cli("batch", str(bundle), str(root), "--out", str(out), *CPU, "--batch-size", "4")
    assert rerun.returncode == 1 and "Traceback" not in rerun.stderr, rerun.stderr
    assert "already done in" in rerun.stderr
    assert files_under(out) == ref_files  # every map exactly once, no temporary file left


def test_ctrl_c_finishes_the_images_in_flight_and_says_how_to_go_on(reference, bundle, tmp_path):
    root, _, _, ref_files = reference
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "depthrt.cli", "batch", str(bundle), str(root), "--out", str(out),
                             *CPU, "--batch-size", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(list(out.rglob("*.color.png"))) < 8 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "finishing the images in flight" in err and "run the same command again" in err.splitlines()[-1]
    written = files_under(out)
    assert len(written) < len(ref_files)
    maps = {rel for rel in written if rel != "errors.jsonl"}
    assert maps and all(written[rel] == ref_files[rel] for rel in maps)  # complete maps only, no temporary files


def test_inputs_from_a_glob_and_a_list_file_name_outputs_stably(tmp_path):
    (tmp_path / "in" / "a").mkdir(parents=True)
    for name in ("x.jpg", "x.png", "y.png"):  # x.jpg and x.png share a stem: each keeps its extension
        Image.new("RGB", (30, 20)).save(tmp_path / "in" / "a" / name)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    root, files = list_inputs(str(tmp_path / "in" / "**" / "*.png"))
    assert root == tmp_path / "in" and [Path(f).name for f in files] == ["x.png", "y.png"]
    listing = tmp_path / "list.txt"
    listing.write_text("# inputs\nin/a/x.jpg\nin/a/x.png\n\nin/a/y.png\n")
    root, files = list_inputs(str(listing))
    jobs = make_jobs(root, files, tmp_path / "out", ["png16"], normals=False)
    assert [Path(j.targets[0][1]).name for j in jobs] == ["x.jpg.depth.png", "x.png.depth.png", "y.depth.png"]
    folder_root, folder_files = list_inputs(str(tmp_path / "in"))
    assert len(folder_files) == 3  # notes.txt is not an image


def test_a_file_listed_twice_is_one_job_with_its_plain_name(tmp_path):
    image = tmp_path / "in" / "x.jpg"
    image.parent.mkdir()
    Image.new("RGB", (30, 20)).save(image)
    jobs = make_jobs(tmp_path / "in", [str(image), str(image)], tmp_path / "out", ["png16"], normals=False)
    assert [Path(j.targets[0][1]).name for j in jobs] == ["x.depth.png"]  # not x.jpg.depth.png


def test_existing_maps_are_kept_without_force_and_replaced_with_it(bundle, tmp_path):
    make_tree(tmp_path / "in", count=3, bad=False)
    out = tmp_path / "out"
    mine = out / "d0" / "img000.depth.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own file")
    kept = batch.run(bundle, str(tmp_path / "in"), out, backend="ort-cpu", progress=False)
    assert mine.read_bytes() == b"the user's own file"
    assert (kept.done, kept.skipped) == (3, 0)  # its colour map was missing, so img000 ran (for that one only)
    assert (out / "d0" / "img000.color.png").exists()
    forced = batch.run(bundle, str(tmp_path / "in"), out, backend="ort-cpu", force=True, progress=False)
    assert forced.done == 3 and mine.read_bytes().startswith(b"\x89PNG")


def test_the_stale_temp_pattern_matches_what_imageio_writes_through(tmp_path):
    # batch keeps its own pattern (imageio stays free of `re`, test_imageio pins its imports): tie the two.
    from depthrt.batch.listing import _TEMP
    from depthrt.imageio import _create_temp

    fd, made = _create_temp(str(tmp_path), "img000.depth.png")
    os.close(fd)
    assert _TEMP.match(os.path.basename(made)) and not _TEMP.match("img000.depth.png")


def test_stale_temporary_files_of_a_killed_run_are_removed(bundle, tmp_path):
    make_tree(tmp_path / "in", count=1, bad=False)
    stale = tmp_path / "out" / "d0" / ".img000.depth.png.0123456789ab.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a PNG")
    messages = []
    batch.run(bundle, str(tmp_path / "in"), tmp_path / "out", backend="ort-cpu", progress=False, log=messages.append)
    assert not stale.exists() and any("removed 1 unfinished temporary file" in m for m in messages)


# ----------------------------------------------------------------------- bad input
def test_empty_folder_is_one_line_error(bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_clean_error(run_cli("batch", str(bundle), str(tmp_path / "empty"), "--out", str(tmp_path / "o"), *CPU),
                       "holds no image files")
    with pytest.raises(InputError, match="does not exist"):
        batch.run(bundle, str(tmp_path / "missing"), tmp_path / "o")
    with pytest.raises(InputError, match="no image files match"):
        batch.run(bundle, str(tmp_path / "empty" / "*.jpg"), tmp_path / "o")


def test_unreadable_files_are_per_file_failures(bundle, tmp_path):
    make_tree(tmp_path / "in", count=2, bad=False)
    (tmp_path / "in" / "truncated.png").write_bytes((tmp_path / "in" / "d1" / "s1" / "img001.png").read_bytes()[:60])
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path}/in/d0/img000.jpg\n{tmp_path}/in/gone.jpg\n{tmp_path}/in/truncated.png\n")
    result = run_cli("batch", str(bundle), str(listing), "--out", str(tmp_path / "o"), *CPU)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "1 done, 0 skipped (already done), 2 failed of 3" in result.stdout
    errors = {Path(e["path"]).name: e["error"] for e in map(json.loads, (tmp_path / "o" / "errors.jsonl").open())}
    assert "file not found" in errors["gone.jpg"] and "truncated" in errors["truncated.png"]


def test_output_inside_the_input_is_refused(bundle, tmp_path):
    make_tree(tmp_path / "in", count=1, bad=False)
    result = run_cli("batch", str(bundle), str(tmp_path / "in"), "--out", str(tmp_path / "in" / "depth"), *CPU)
    assert_clean_error(result, "inside the input folder")
    assert not (tmp_path / "in" / "depth").exists()


def test_a_glob_never_reads_earlier_maps_inside_out_as_inputs(bundle, tmp_path):
    make_tree(tmp_path / "in", count=2, bad=False)  # img000.jpg, img001.png
    pattern, out = str(tmp_path / "in" / "**" / "*.png"), tmp_path / "in" / "depth"
    first = batch.run(bundle, pattern, out, backend="ort-cpu", progress=False)
    second = batch.run(bundle, pattern, out, backend="ort-cpu", progress=False)
    assert (first.total, first.done) == (1, 1) and (second.total, second.skipped) == (1, 1)
    assert not list((out / "depth").rglob("*"))  # no maps of maps


def test_read_only_output_folder_is_one_line_error(bundle, tmp_path, monkeypatch, capsys):
    """Root writes through chmod, so the read-only filesystem is simulated where files are created."""
    from depthrt.cli import main

    make_tree(tmp_path / "in", count=1, bad=False)
    out = tmp_path / "ro"
    out.mkdir()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(out)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    code = main(["batch", str(bundle), str(tmp_path / "in"), "--out", str(out), *CPU])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == OutputError.exit_code and len(err) == 1 and "Traceback" not in err[0]
    assert "not writable (Read-only file system)" in err[0] and "choose another --out" in err[0]
    assert list(out.iterdir()) == []


def test_batch_size_outside_the_graph_range_is_refused(bundle, tmp_path):
    make_tree(tmp_path / "in", count=1, bad=False)
    assert_clean_error(run_cli("batch", str(bundle), str(tmp_path / "in"), "--out", str(tmp_path / "o"), *CPU,
                               "--batch-size", "99"), "--batch-size 99", "1..8")
    with pytest.raises(InputError, match="add --ray"):
        batch.run(bundle, str(tmp_path / "in"), tmp_path / "o", workers=2)


def test_gpu_backends_batch_to_the_graph_max_and_cpu_backends_one_at_a_time():
    # One list says which backends run on the GPU: the local default batch here, Ray's GPU requests.
    from types import SimpleNamespace

    from depthrt.backends import GPU_BACKENDS
    from depthrt.batch.core import batch_limit

    assert set(GPU_BACKENDS) == {"trt", "trt-rtx", "ort-cuda"}
    graph = {"dynamic": {"batch": {"min": 1, "opt": 4, "max": 8}}}
    assert {b: batch_limit(SimpleNamespace(graph=graph, backend=b), None)
            for b in ("trt", "trt-rtx", "ort-cuda", "openvino", "ort-cpu")} == \
        {"trt": 8, "trt-rtx": 8, "ort-cuda": 8, "openvino": 1, "ort-cpu": 1}


def test_progress_line_shows_rate_and_eta():
    from depthrt.progress import Counter

    counter = Counter(10, enabled=False)
    counter.start -= 4.0  # 4 s in, 2 written: 0.5 images/s, 8 left
    line = counter.line(2)
    assert "2/10 images" in line and "0.50 images/s" in line and "ETA 0:16" in line
    assert "1 failed" in counter.line(2, failed=1) and "ETA --" in counter.line(10)


def test_ray_mode_without_ray_installed_names_the_extra(bundle, tmp_path, monkeypatch):
    make_tree(tmp_path / "in", count=1, bad=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as where it is not installed
    with pytest.raises(InputError, match=r"pip install 'depthrt\[ray\]'"):
        batch.run(bundle, str(tmp_path / "in"), tmp_path / "o", backend="ort-cpu", ray="")


def test_bench_batch_script_times_loop_and_local_on_the_same_files(bundle, tmp_path):
    from conftest import ROOT

    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_batch.py"), "--bundle", str(bundle),
                             "--images", "4", "--no-ray", "--backend", "ort-cpu", "--json", str(tmp_path / "b.json")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "predict loop" in result.stdout and "batch (local)" in result.stdout
    assert "local batch / loop:" in result.stdout and "decode + preprocess" in result.stdout
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["images"] == 4 and report["seconds"]["predict loop"] > 0 and report["local_vs_loop"] > 0
