"""`depthrt batch --ray` on one local Ray instance (2 CPUs, 200 MB object store) for the whole module:
the same files as the local run, bad files reported, a killed worker survived, a dead address."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from batch_images import BAD, bundle, files_under, reference  # noqa: F401 (fixtures)
from conftest import assert_clean_error, run_cli

ray = pytest.importorskip("ray", reason="depthrt batch --ray needs Ray Data: pip install 'depthrt[ray]'")

from depthrt import batch  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield
    ray.shutdown()


def _run_ray(bundle, root, out):
    return batch.run(bundle, str(root), out, backend="ort-cpu", batch_size=4, ray="", progress=False)


def test_ray_mode_writes_the_same_files_as_the_local_run(reference, bundle, tmp_path):
    root, _, images, ref_files = reference
    summary = _run_ray(bundle, root, tmp_path / "out")
    assert (summary.done, summary.failed, summary.skipped) == (len(images), len(BAD), 0)
    assert files_under(tmp_path / "out") == ref_files  # every map bit-identical, errors.jsonl the same


def _worker_pids(name: str) -> list[int]:
    """Ray worker processes whose title names ``name`` (Ray sets it to ray::<actor or task>)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if name in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_worker_killed_mid_job_is_retried_and_every_map_is_written_once(reference, bundle, tmp_path):
    root, _, images, ref_files = reference
    out = tmp_path / "out"
    result: dict = {}
    job = threading.Thread(target=lambda: result.setdefault("summary", _run_ray(bundle, root, out)))
    job.start()
    killed = None
    deadline = time.monotonic() + 300
    while job.is_alive() and time.monotonic() < deadline:
        actors = _worker_pids("InferActor")
        if actors and len(list(out.rglob("*.color.png"))) >= 10:
            killed = actors[0]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.05)
    job.join(timeout=600)
    assert killed is not None, "the job ended before an inference worker could be killed"
    summary = result["summary"]
    assert (summary.done, summary.failed) == (len(images), len(BAD))
    assert files_under(out) == ref_files  # nothing lost, duplicated or half-written


def test_a_ray_address_that_does_not_answer_is_a_one_line_error(bundle, tmp_path, reference):
    root = reference[0]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "errors.jsonl").write_text('{"path": "earlier run"}\n')
    start = time.monotonic()
    result = run_cli("batch", str(bundle), str(root), "--out", str(tmp_path / "o"), "--ray", f"127.0.0.1:{port}")
    assert_clean_error(result, "no Ray cluster answers at", f"127.0.0.1:{port}")
    assert time.monotonic() - start < 120
    assert not list((tmp_path / "o").rglob("*.png"))
    assert (tmp_path / "o" / "errors.jsonl").read_text() == '{"path": "earlier run"}\n'  # a failed start keeps it
