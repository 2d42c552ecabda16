"""Build options for `depthrt build`: one frozen object, like Polygraphy's ``CreateConfig``.

Everything that changes the plan TensorRT produces lives here, so the cache key can be made from
it (see ``plan.cache_key``); options that only change *how* we build (progress, timing-cache file)
do not, because they never change the engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from depthrt.errors import InputError

# Plans are strongly typed: the precision is the graph's. fp32 builds the fp32 graph (TF32 off), fp16 and
# bf16 build the bundle's variant of that precision (see ``build.select_graphs``).
PRECISIONS = ("fp16", "bf16", "fp32")
# trt: full TensorRT (10 or 11), needs the GPU it builds for. trt-rtx: TensorRT for RTX, builds ahead of
# time without a GPU and JIT-compiles on the user's RTX card at load.
TARGETS = ("trt", "trt-rtx")
# TensorRT-RTX compute capabilities it can target (GeForce / RTX PRO); data-centre GPUs need `trt`.
RTX_COMPUTE_CAPABILITIES = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
DEFAULT_OPT_LEVEL = 3  # TensorRT's own default: the usual trade of build time against speed

_HW = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True)
class Range:
    """A dynamic dimension's min/opt/max, as in the manifest's ``dynamic`` table."""

    min: int
    opt: int
    max: int

    def as_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class BuildConfig:
    """What to build. ``None`` fields fall back to the manifest (ranges) or TensorRT (workspace).

    ``sizes`` overrides the dims named ``height`` and ``width`` of every graph input, as
    ``{"min": (h, w), "opt": (h, w), "max": (h, w)}``; ``batch`` overrides the dim named ``batch``.
    """

    precision: str = "fp32"  # reduced precision is always the user's choice (PRODUCT.md)
    target: str = "trt"
    sizes: dict[str, tuple[int, int]] | None = None
    batch: Range | None = None
    opt_level: int = DEFAULT_OPT_LEVEL
    workspace_mib: int | None = None
    # Only for trt-rtx: the compute capabilities to compile for (None: TensorRT-RTX's default).
    compute_capabilities: tuple[str, ...] | None = None
    # Only for trt: a version-compatible plan without an embedded lean runtime, which TensorRT's lean
    # runtime (`tensorrt_lean`, no builder) loads as well as full TensorRT.
    version_compatible: bool = False
    extra: dict[str, str] = field(default_factory=dict)  # reserved; part of the key

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision '{self.precision}': choose one of {', '.join(PRECISIONS)}")
        if self.target not in TARGETS:
            raise InputError(f"unknown target '{self.target}': choose one of {', '.join(TARGETS)}")
        if not 0 <= self.opt_level <= 5:
            raise InputError(f"--opt-level {self.opt_level}: TensorRT accepts 0 (fastest build) to 5")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise InputError(f"--workspace {self.workspace_mib}: give the limit in MiB, at least 1")
        if self.sizes is not None:
            if set(self.sizes) != {"min", "opt", "max"}:
                raise InputError("give all three of --min, --opt and --max (HxW), or none of them")
            for axis, name in ((0, "height"), (1, "width")):
                lo, mid, hi = (self.sizes[k][axis] for k in ("min", "opt", "max"))
                if not lo <= mid <= hi:
                    raise InputError(f"profile {name}s must satisfy min <= opt <= max, got {lo}, {mid}, {hi}")
        if self.batch is not None and not 1 <= self.batch.min <= self.batch.opt <= self.batch.max:
            raise InputError(f"--batch must satisfy 1 <= min <= opt <= max, got {self.batch.as_dict()}")
        if self.compute_capabilities is not None:
            if self.target != "trt-rtx":
                raise InputError("--compute-capability is for --target trt-rtx; full TensorRT builds for this GPU")
            bad = [c for c in self.compute_capabilities if c not in RTX_COMPUTE_CAPABILITIES]
            if bad:
                raise InputError(f"TensorRT-RTX cannot target compute capability {bad[0]}: choose from "
                                 f"{', '.join(RTX_COMPUTE_CAPABILITIES)}")
        if self.version_compatible and self.target != "trt":
            raise InputError("--version-compatible is for --target trt (plans for TensorRT's lean runtime); "
                             "TensorRT-RTX plans load only in the TensorRT-RTX release that built them")

    def options(self) -> dict:
        """The options as plain data: recorded in the plan's metadata and hashed into its key."""
        return {
            "precision": self.precision,
            "target": self.target,
            "sizes": {k: list(v) for k, v in self.sizes.items()} if self.sizes else None,
            "batch": self.batch.as_dict() if self.batch else None,
            "opt_level": self.opt_level,
            "workspace_mib": self.workspace_mib,
            "compute_capabilities": list(self.compute_capabilities) if self.compute_capabilities else None,
            "version_compatible": self.version_compatible,
            "extra": dict(sorted(self.extra.items())),
        }

    def command_args(self) -> list[str]:
        """The `depthrt build` arguments that recreate this config (for error messages)."""
        args = ["--precision", self.precision]
        if self.target != "trt":
            args += ["--target", self.target]
        if self.sizes:
            for k in ("min", "opt", "max"):
                args += [f"--{k}", "{}x{}".format(*self.sizes[k])]
        if self.batch:
            args += ["--batch", f"{self.batch.min}:{self.batch.opt}:{self.batch.max}"]
        if self.opt_level != DEFAULT_OPT_LEVEL:
            args += ["--opt-level", str(self.opt_level)]
        if self.workspace_mib is not None:
            args += ["--workspace", str(self.workspace_mib)]
        if self.compute_capabilities:
            args += ["--compute-capability", ",".join(self.compute_capabilities)]
        if self.version_compatible:
            args += ["--version-compatible"]
        return args


def parse_hw(text: str, option: str = "size") -> tuple[int, int]:
    """``"518x518"`` -> ``(518, 518)`` (height first, as everywhere in depthrt)."""
    m = _HW.match(text or "")
    if not m or min(int(m[1]), int(m[2])) < 1:
        raise InputError(f"{option} {text!r}: give HEIGHTxWIDTH in pixels, e.g. 518x518")
    return int(m[1]), int(m[2])


def parse_batch(text: str) -> Range:
    """``"4"`` (fixed batch) or ``"1:1:4"`` (min:opt:max) -> Range."""
    parts = (text or "").split(":")
    if len(parts) not in (1, 3) or not all(p.strip().isdigit() for p in parts):
        raise InputError(f"--batch {text!r}: give N (fixed) or MIN:OPT:MAX, e.g. 1:1:4")
    values = [int(p) for p in parts] * (3 if len(parts) == 1 else 1)
    return Range(*values)
