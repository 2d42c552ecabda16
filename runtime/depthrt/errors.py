"""Typed errors. Each message says what went wrong and what to do about it.

The CLI prints ``str(error)`` on one line and exits non-zero; nothing else should
reach the user as a traceback.
"""

import errno


class DepthrtError(Exception):
    """Base of every error depthrt raises on purpose."""

    exit_code = 2


class InputError(DepthrtError):
    """An image, array or option the user gave cannot be used."""


class BundleError(DepthrtError):
    """A bundle directory is missing, incomplete, edited or of another schema."""


class WeightsError(DepthrtError):
    """Model weights are missing, of another architecture, or refused (pickle)."""


class BackendError(DepthrtError):
    """A backend's library or device is not available, or it failed to run."""


class OutputError(DepthrtError):
    """An output path cannot be written, or would overwrite a user's file."""


class ParityError(DepthrtError):
    """An exported graph does not match its PyTorch reference within tolerance."""

    exit_code = 1


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk or the user's quota is full.

    Libraries that write through C++ (the ONNX exporter, TensorRT) re-raise the OSError as their own
    error type, so its chain and its text are looked at too.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "no space left on device" in str(exc).lower() or "disk quota exceeded" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False
