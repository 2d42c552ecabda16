"""What the fuzz tests share: example budgets, a per-case time bound, and the case counter.

Every property test states its CI budget (``examples(n)``); ``DEPTHRT_FUZZ_EXAMPLES=N`` raises each
budget to N for a longer local run (then the search is random, not the fixed CI sequence).
Each case ends in one of our clear errors or a checked result; ``record`` counts which, and the
counts are printed at the end of the session (and written to ``$DEPTHRT_FUZZ_REPORT`` as JSON when
set) for docs/reliability.md.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import threading

import pytest
from hypothesis import HealthCheck, settings

from depthrt.errors import DepthrtError

LONG_RUN = int(os.environ.get("DEPTHRT_FUZZ_EXAMPLES", "0") or 0)
CASE_LIMIT_S = 60  # a case that runs this long has hung (the slowest real case takes well under 5 s)

COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def examples(n: int) -> settings:
    """Hypothesis settings for a property with a CI budget of ``n`` cases (more with DEPTHRT_FUZZ_EXAMPLES)."""
    return settings(max_examples=max(n, LONG_RUN), deadline=None, database=None, derandomize=not LONG_RUN,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def record(test: str, outcome: BaseException | str) -> None:
    """Count one case of ``test``: a result (a string saying which) or the DepthrtError it ended in."""
    COUNTS[test][outcome if isinstance(outcome, str) else type(outcome).__name__] += 1


def clear_error(test: str, error: BaseException, *, one_line: bool = True) -> None:
    """Check that ``error`` is one of ours with a one-line message, and count it."""
    assert isinstance(error, DepthrtError), f"{type(error).__name__}: {error}"
    message = str(error)
    assert message and (not one_line or "\n" not in message), repr(message)
    record(test, error)


@contextlib.contextmanager
def bounded(seconds: float = CASE_LIMIT_S):
    """Fail the case (instead of hanging the suite) if it runs longer than ``seconds``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError(f"case still running after {seconds:g} s: a hang")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def report_lines(tests=None) -> list[str]:
    """One line per fuzz test (those in ``tests``, or all): its case count and outcomes."""
    lines = []
    for test in sorted(COUNTS if tests is None else tests):
        total = sum(COUNTS[test].values())
        parts = ", ".join(f"{k} {v}" for k, v in COUNTS[test].most_common())
        lines.append(f"{test}: {total} cases ({parts})")
    return lines


@pytest.fixture(scope="module", autouse=True)
def fuzz_summary(request):
    """After each fuzz module: print its case counts; write all counts so far to $DEPTHRT_FUZZ_REPORT."""
    before = set(COUNTS)
    yield
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # to the terminal, not the captured output
            for line in report_lines(set(COUNTS) - before):
                reporter.write_line(f"[fuzz] {line}")
    path = os.environ.get("DEPTHRT_FUZZ_REPORT")
    if path and COUNTS:
        data = {test: dict(counter) for test, counter in COUNTS.items()}
        with open(path, "w") as fh:
            json.dump({"examples_per_test": LONG_RUN or "ci budgets", "counts": data}, fh, indent=2)
