"""The one-machine batch run: decode -> inference -> write, as pipelined stages.

Decoding (file read, image decode, resize to the model's input) runs in a few threads, inference
in one thread that stacks same-size inputs into batches, and postprocessing plus encoding and
writing the maps in a few more threads. They hand work on through the video pipeline's bounded
channels, so inference never waits for a file to be read or a PNG to be compressed, and memory
stays bounded. Pillow, numpy and the inference runtimes release the GIL in their heavy parts.

Ctrl-C once: take no new images, finish those in flight; twice: stop at once. Either way every
map on disk is complete (see :mod:`depthrt.batch.listing`).
"""

from __future__ import annotations

import threading

from ..video.pipeline import _END, Channel
from .core import decode, describe, write_outputs
from .listing import Job


class LocalRun:
    """Run ``jobs`` through a loaded estimator. ``errors`` collects (job, message) per failed file."""

    def __init__(self, est, jobs: list[Job], force: bool, batch_size: int, decoders: int = 2,
                 writers: int = 2, progress=None):
        self.est, self.force, self.batch_size = est, force, batch_size
        self.decoders, self.writers, self.progress = max(1, decoders), max(1, writers), progress
        self.halt = threading.Event()  # abort at once (second Ctrl-C, or a bug)
        self.stopping = threading.Event()  # take no new images
        self.done = 0
        self.errors: list[tuple[Job, str]] = []
        self.bug: BaseException | None = None
        self._lock = threading.Lock()
        self._next = iter(jobs)
        # Room for a batch being filled and the next one, per stage: bounded memory at any size.
        self.ch_infer = Channel(2 * batch_size + self.decoders, self.halt)
        self.ch_write = Channel(2 * batch_size + self.writers, self.halt)

    # --------------------------------------------------------------- bookkeeping
    def _fail(self, job: Job, exc: BaseException) -> None:
        with self._lock:
            self.errors.append((job, describe(exc)))

    def _take(self) -> Job | None:
        if self.stopping.is_set() or self.halt.is_set():
            return None
        with self._lock:
            return next(self._next, None)

    def _guard(self, body, after=None):
        """A stage thread's body: a bug (not a per-file failure) stops the run and is re-raised."""
        def run():
            try:
                body()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self.bug = self.bug or exc
                self.halt.set()
            finally:
                if after:
                    after()
        return run

    # --------------------------------------------------------------- stages
    def _decode(self) -> None:
        while (job := self._take()) is not None:
            try:
                tensor, meta = decode(job, self.est)
            except Exception as exc:  # noqa: BLE001 - a bad file is reported and skipped
                self._fail(job, exc)
                continue
            if not self.ch_infer.put((job, tensor, meta)):
                return

    def _infer(self) -> None:
        buckets: dict[tuple, list] = {}
        pending = 0
        while True:
            item = self.ch_infer.get()
            if item is _END:
                break
            bucket = buckets.setdefault(item[1].shape, [])
            bucket.append(item)
            pending += 1
            if len(bucket) >= self.batch_size:
                pending -= self._run(buckets.pop(item[1].shape))
            elif pending > 2 * self.batch_size:  # many sizes: run the fullest bucket, never hoard inputs
                shape = max(buckets, key=lambda s: len(buckets[s]))
                pending -= self._run(buckets.pop(shape))
        if not self.halt.is_set():
            for bucket in buckets.values():
                self._run(bucket)

    def _run(self, items: list) -> int:
        try:
            rows = self.est.infer_each([tensor for _, tensor, _ in items], self.batch_size)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory on this size: these files fail
            for job, _, _ in items:
                self._fail(job, exc)
            return len(items)
        for (job, _, meta), row in zip(items, rows):
            self.ch_write.put((job, row, meta))
        return len(items)

    def _write(self) -> None:
        while (item := self.ch_write.get()) is not _END:
            job, row, meta = item
            try:
                write_outputs(job, self.est.postprocess(row, meta), self.force)
            except Exception as exc:  # noqa: BLE001 - e.g. disk full: reported, the run goes on
                self._fail(job, exc)
                continue
            with self._lock:
                self.done += 1

    # --------------------------------------------------------------- the run
    def run(self) -> None:
        decoders_left = [self.decoders]

        def decoder_finished():
            with self._lock:
                decoders_left[0] -= 1
                last = decoders_left[0] == 0
            if last:
                self.ch_infer.put(_END)

        threads = [threading.Thread(target=self._guard(self._decode, decoder_finished), name=f"decode-{i}", daemon=True)
                   for i in range(self.decoders)]
        # One end marker per writer, so each of them stops.
        threads.append(threading.Thread(target=self._guard(
            self._infer, lambda: [self.ch_write.put(_END) for _ in range(self.writers)]), name="inference", daemon=True))
        threads += [threading.Thread(target=self._guard(self._write), name=f"write-{i}", daemon=True)
                    for i in range(self.writers)]
        for t in threads:
            t.start()
        try:
            self._wait(threads)
        except KeyboardInterrupt:
            self.stopping.set()
            if self.progress:
                self.progress.stream.write("\n[depthrt] stopping: finishing the images in flight "
                                           "(Ctrl-C again to stop at once)\n")
            try:
                self._wait(threads)
            except KeyboardInterrupt:
                self.halt.set()
                for t in threads:
                    t.join(timeout=10)
            raise
        finally:
            if self.progress:
                self.progress.close(self.done, len(self.errors))
        if self.bug is not None:
            raise self.bug

    def _wait(self, threads) -> None:
        """Join the stages, updating the progress line meanwhile (join with a timeout: Ctrl-C is seen)."""
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.5)
                if self.progress:
                    self.progress.update(self.done, len(self.errors))
