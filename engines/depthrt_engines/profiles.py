"""Optimisation profiles derived from the manifest: pure functions, no TensorRT.

A graph input's shape in the manifest mixes fixed sizes and named dynamic dims
(``["batch", 3, "height", "width"]``); the graph's ``dynamic`` table gives each name its allowed
range. A profile gives every input a min/opt/max shape; by default the manifest's ranges, or the
user's ``--min/--opt/--max HxW`` and ``--batch`` where given. An override must be a size the graph
runs at: inside the manifest's ``limits`` (the model's own bounds; ONNX Runtime runs the same sizes),
or, for bundles exported before those were recorded, inside the ``dynamic`` range export validated,
and on the dim's ``multiple_of``; anything else is refused here rather than producing an engine that
accepts sizes the model cannot run.
"""

from __future__ import annotations

from dataclasses import dataclass

from depthrt.errors import InputError

from .config import BuildConfig, Range

_SIZE_DIMS = {"height": 0, "width": 1}  # which element of an HxW override feeds each named dim


@dataclass(frozen=True)
class InputProfile:
    """min/opt/max shapes of one named input."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def as_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @staticmethod
    def from_dict(name: str, data: dict) -> "InputProfile":
        return InputProfile(name, tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


def _check_override(dim: str, wanted: Range, allowed: dict, graph: str, limit: dict | None = None) -> Range:
    """``wanted`` if the graph can run it: inside the manifest's ``limits`` for ``dim`` when it records
    them (the model's own bounds), else inside its ``dynamic`` range (bundles from before limits)."""
    step = allowed.get("multiple_of", 1)
    for which, value in wanted.as_dict().items():
        if limit is not None:
            if value < limit["min"] or ("max" in limit and value > limit["max"]):
                bound = f"at least {limit['min']}" + (f" and at most {limit['max']}" if "max" in limit else "")
                raise InputError(f"--{which} {dim} {value} is not a size graph '{graph}' runs at; choose {bound}")
        elif not allowed["min"] <= value <= allowed["max"]:
            raise InputError(
                f"--{which} {dim} {value} is outside the range graph '{graph}' was exported and checked for "
                f"({allowed['min']}..{allowed['max']}); choose a value in that range"
            )
        if value % step:
            lower, upper = value - value % step, value - value % step + step
            raise InputError(
                f"--{which} {dim} {value} is not a multiple of {step}, which graph '{graph}' needs; "
                f"use {lower} or {upper}"
            )
    return wanted


def dim_ranges(graph: dict, config: BuildConfig) -> dict[str, Range]:
    """The range of each named dynamic dim of ``graph`` after the config's overrides."""
    ranges: dict[str, Range] = {}
    for dim, allowed in graph["dynamic"].items():
        wanted = Range(allowed["min"], allowed["opt"], allowed["max"])
        if config.sizes is not None and dim in _SIZE_DIMS:
            axis = _SIZE_DIMS[dim]
            wanted = _check_override(dim, Range(*(config.sizes[k][axis] for k in ("min", "opt", "max"))),
                                     allowed, graph["name"], graph.get("limits", {}).get(dim))
        elif config.batch is not None and dim == "batch":
            wanted = _check_override(dim, config.batch, allowed, graph["name"])
        ranges[dim] = wanted
    used = {d for t in graph["inputs"] for d in t["shape"] if isinstance(d, str)}
    if config.sizes is not None and not used & set(_SIZE_DIMS):
        raise InputError(f"graph '{graph['name']}' has no dynamic height/width, so --min/--opt/--max do not apply")
    return ranges


def derive_profiles(graph: dict, config: BuildConfig) -> list[InputProfile]:
    """One min/opt/max shape per graph input (a single TensorRT optimisation profile)."""
    ranges = dim_ranges(graph, config)
    profiles = []
    for tensor in graph["inputs"]:
        shapes: dict[str, list[int]] = {"min": [], "opt": [], "max": []}
        for dim in tensor["shape"]:
            if isinstance(dim, int):
                for k in shapes:
                    shapes[k].append(dim)
                continue
            if dim not in ranges:
                raise InputError(
                    f"graph '{graph['name']}' input '{tensor['name']}' uses dim '{dim}' that its manifest gives "
                    "no range for; the bundle is damaged: re-export it"
                )
            for k, value in ranges[dim].as_dict().items():
                shapes[k].append(value)
        profiles.append(InputProfile(tensor["name"], tuple(shapes["min"]), tuple(shapes["opt"]),
                                     tuple(shapes["max"])))
    return profiles

