"""The calling thread's floating-point environment, scoped to the native calls that need it.

ONNX Runtime's ``session.set_denormal_as_zero`` (flush denormals to zero: fast on x86 when tiny
activations appear) sets flush-to-zero and denormals-are-zero in the MXCSR register of the thread
that creates the session, and leaves them set. Every later float computation of that thread
changes with it: numpy's, PyTorch's, and OpenVINO's. Under denormals-are-zero, OpenVINO's CPU
plugin with its AVX2 kernels (an AVX2-only CPU) computes the target shape of the Broadcast that
torch's ``expand(batch, -1, -1)`` becomes (``Where(size == -1, 1, size)``) wrong in a model compiled
for any input shape: the ``-1`` stays and the run fails with "Broadcast ... Value -1 not in range"
(AVX512 kernels, per-shape models, or the flag off: no failure). So the ORT backend keeps ORT's
flags inside its own calls (:func:`using` ORT's environment, then back) and OpenVINO runs in the
:func:`default` one.

Uses the C library's ``fegetenv``/``fesetenv`` through ctypes; where they cannot be found,
:func:`available` is False and nothing here changes anything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from contextlib import contextmanager
from functools import lru_cache

_ENV_BYTES = 128  # fenv_t is 32 bytes on x86-64 glibc, 16 on macOS, 8 on Windows and arm64: room for any


@lru_cache(maxsize=1)
def _libm():
    try:
        name = "ucrtbase" if sys.platform == "win32" else ctypes.util.find_library("m")
        if not name:
            return None
        lib = ctypes.CDLL(name)
        lib.fegetenv.argtypes = lib.fesetenv.argtypes = [ctypes.c_void_p]
        return lib
    except (OSError, AttributeError):
        return None


def available() -> bool:
    """Whether the floating-point environment can be saved and restored here."""
    return _libm() is not None


def get() -> bytes | None:
    """The calling thread's floating-point environment (opaque), or None where it cannot be read."""
    lib = _libm()
    if lib is None:
        return None
    buf = ctypes.create_string_buffer(_ENV_BYTES)
    return buf.raw if lib.fegetenv(buf) == 0 else None


def _set(env: bytes) -> None:
    lib = _libm()
    if lib is not None:
        lib.fesetenv(ctypes.create_string_buffer(env, _ENV_BYTES))


def _default_env():
    """C's FE_DFL_ENV (round to nearest, all exceptions masked, denormals kept), where it is known."""
    lib = _libm()
    if lib is None:
        return None
    if sys.platform.startswith("linux"):
        return ctypes.c_void_p(-1)  # glibc and musl: #define FE_DFL_ENV ((const fenv_t *) -1)
    if sys.platform == "darwin":
        try:
            return ctypes.c_void_p(ctypes.addressof(ctypes.c_char.in_dll(lib, "_FE_DFL_ENV")))
        except ValueError:
            return None
    return None


@contextmanager
def using(env: bytes | None):
    """Run the block in ``env`` (from :func:`get`; None: as it is), then give the calling thread
    back the environment it had."""
    with kept():
        if env is not None:
            _set(env)
        yield


@contextmanager
def default():
    """Run the block in C's default environment (denormals kept), then give the calling thread back
    the environment it had. Where the default is not known here, the block runs as it is."""
    with kept():
        target = _default_env()
        if target is not None:
            _libm().fesetenv(target)
        yield


@contextmanager
def kept():
    """Give the calling thread back its floating-point environment after the block, whatever the
    block (a library) changed in it."""
    saved = get()
    try:
        yield
    finally:
        if saved is not None:
            _set(saved)
