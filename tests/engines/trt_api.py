"""Which TensorRT names our code uses, read from the code itself, and a check of them against real bindings.

The collector walks a module's syntax tree. The TensorRT module is whatever our code calls ``trt`` (the
builder and runner bind ``trt`` to ``tensorrt``, ``tensorrt_lean`` or ``tensorrt_rtx_bindings``), plus
any ``import tensorrt... as X``. It records:

* chains rooted at the module: ``trt.BuilderFlag.TF32`` -> ``trt.BuilderFlag.TF32``;
* attributes of TensorRT objects: ``builder = trt.Builder(...)`` makes ``builder`` a ``Builder``, and
  ``builder.create_builder_config()`` an ``IBuilderConfig`` *by the return type the real binding
  declares* (pybind11 signatures in its docstrings), so ``config.set_flag`` is ``IBuilderConfig.set_flag``;
  ``self.x = ...`` and tuples returned by our own helpers are followed the same way;
* the methods a class derived from a TensorRT class overrides (``IProgressMonitor.phase_start``).

What it cannot see: names built at run time (``getattr(trt.ComputeCapability, "SM" + cap)``) and
objects passed in from elsewhere with no annotation. ``python tests/engines/trt_api.py`` prints the list.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_FILES = (ROOT / "runtime" / "depthrt" / "backends" / "trt.py",)
BUILDER_FILES = tuple(sorted((ROOT / "engines" / "depthrt_engines").glob("*.py")))
MODULE_NAMES = ("tensorrt", "tensorrt_lean", "tensorrt_rtx", "tensorrt_rtx_bindings")
ROOT_NAMES = {"trt"}  # what our code calls the TensorRT module

# The TensorRT "Migrating from 10.x to 11.x" guide's removed Python APIs. Some are still present in the
# 11.4 bindings (DIRECT_IO is deprecated there, not gone), so existence alone would not catch them.
REMOVED_IN_11 = frozenset(
    [f"trt.BuilderFlag.{f}" for f in ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                                      "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO")]
    + [f"IBuilderConfig.{a}" for a in ("int8_calibrator", "set_calibration_profile", "get_calibration_profile",
                                       "set_quantization_flag", "get_quantization_flag", "quantization_flags",
                                       "clear_quantization_flag")]
    + ["ICudaEngine.device_memory_size", "ICudaEngine.get_device_memory_size_for_profile",
       "Builder.platform_has_fast_fp16", "Builder.platform_has_fast_int8", "Builder.platform_has_tf32",
       "ILayer.precision", "ILayer.set_output_type", "ILayer.reset_precision", "ILayer.precision_is_set",
       "trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH", "trt.QuantizationFlag", "trt.IInt8Calibrator",
       "trt.IAlgorithmSelector"]
)
_RETURNS = re.compile(r"\)\s*->\s*([\w.]+)")


@dataclass(frozen=True, order=True)
class Use:
    """One TensorRT name used by our code: ``trt.A.B`` (owner None) or ``Class.attr``."""

    name: str
    file: str
    line: int

    @property
    def parts(self) -> list[str]:
        return self.name.split(".")


class Collector:
    """Collects :class:`Use` s from source text; ``references`` are the real modules that give return types."""

    def __init__(self, references: list[Any]):
        self.references = references

    def _class(self, name: str) -> Any | None:
        for module in self.references:
            cls = getattr(module, name, None)
            if isinstance(cls, type):
                return cls
        return None

    def _returns(self, owner: str, method: str) -> str | None:
        """The class a TensorRT method returns, from its pybind11 signature."""
        cls = self._class(owner)
        doc = getattr(getattr(cls, method, None), "__doc__", None) or ""
        for found in _RETURNS.findall(doc):
            name = found.rsplit(".", 1)[-1]
            if self._class(name) is not None:
                return name
        return None

    def collect(self, source: str, filename: str = "<snippet>") -> list[Use]:
        tree = ast.parse(source, filename)
        roots = set(ROOT_NAMES)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots |= {a.asname or a.name for a in node.names if a.name.split(".")[0] in MODULE_NAMES}
        self.roots, self.types, self.returns = roots, {}, {}
        for _ in range(4):  # types flow through assignments and helper returns: a few passes reach a fixpoint
            self._infer(tree)
        uses = []
        for node in ast.walk(tree):
            for name in self._names(node):
                uses.append(Use(name, filename, getattr(node, "lineno", 0)))
        return sorted(set(uses))

    # --- types of expressions
    def _chain(self, node: ast.AST) -> list[str] | None:
        """``trt.A.B`` -> ["A", "B"]; None when the expression is not rooted at the TensorRT module."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in self.roots:
            return parts[::-1]
        return None

    def _key(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            return f"self.{node.attr}"
        return None

    def type_of(self, node: ast.AST) -> str | None:
        key = self._key(node)
        if key is not None:
            return self.types.get(key)
        if isinstance(node, ast.Call):
            chain = self._chain(node.func)
            if chain:  # trt.Builder(...) -> Builder
                return chain[-1] if self._class(chain[-1]) is not None else None
            if isinstance(node.func, ast.Attribute):
                owner = self.type_of(node.func.value)
                return self._returns(owner, node.func.attr) if owner else None
        return None

    def _annotation(self, node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):  # "tensorrt.INetworkDefinition"
            node = ast.parse(node.value, mode="eval").body
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and (node.value.id in self.roots or node.value.id in MODULE_NAMES):
            return node.attr if self._class(node.attr) is not None else None
        return None

    def _infer(self, tree: ast.AST) -> None:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for arg in node.args.args + node.args.kwonlyargs:
                    if (t := self._annotation(arg.annotation)) is not None:
                        self.types[arg.arg] = t
                for ret in (n for n in ast.walk(node) if isinstance(n, ast.Return) and n.value is not None):
                    values = ret.value.elts if isinstance(ret.value, ast.Tuple) else [ret.value]
                    found = [self.type_of(v) for v in values]
                    if any(found):
                        self.returns[node.name] = found
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if node.value is None:
                    continue
                for target in targets:
                    self._bind(target, node.value)

    def _bind(self, target: ast.AST, value: ast.AST) -> None:
        if isinstance(target, ast.Tuple):
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in self.returns:
                for elt, t in zip(target.elts, self.returns[value.func.id]):
                    if t and (key := self._key(elt)):
                        self.types[key] = t
            return
        key, t = self._key(target), self.type_of(value)
        if key and t:
            self.types[key] = t

    # --- names used at one node
    def _names(self, node: ast.AST) -> list[str]:
        if isinstance(node, ast.ClassDef):  # overrides of a TensorRT base class must exist in it
            bases = [c[-1] for c in map(self._chain, node.bases) if c]
            methods = [n.name for n in node.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("__")]
            return [f"{b}.{m}" for b in bases for m in methods]
        if not isinstance(node, ast.Attribute):
            return []
        chain = self._chain(node)
        if chain is not None:
            return [".".join(["trt", *chain])]
        if self._chain(node.value) is None and (owner := self.type_of(node.value)):
            return [f"{owner}.{node.attr}"]
        return []


def missing(uses: list[Use], module: Any, required: bool = True) -> list[str]:
    """Uses ``module`` lacks, or that TensorRT 11 removed. ``required=False`` skips a name whose first part
    the module does not have at all (the lean runtime has no Builder: its builder-side names are not its)."""
    problems = []
    for use in uses:
        parts = use.parts[1:] if use.parts[0] == "trt" else use.parts
        where = f"{use.file}:{use.line}"
        obj, absent = module, None
        for i, part in enumerate(parts):
            if not hasattr(obj, part):
                absent = i
                break
            obj = getattr(obj, part)
        if absent is not None and (absent > 0 or required):
            problems.append(f"{use.name} ({where}): {module.__name__} has no {'.'.join(parts[: absent + 1])}")
        elif use.name in REMOVED_IN_11 or any(use.name.startswith(r + ".") for r in REMOVED_IN_11):
            problems.append(f"{use.name} ({where}): removed in TensorRT 11 (the migration guide's list)")
    return problems


def load(name: str) -> Any | None:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def collect_files(files: tuple[Path, ...], references: list[Any]) -> list[Use]:
    collector = Collector(references)
    uses = []
    for path in files:
        uses += collector.collect(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    return uses


def main() -> int:
    refs = [m for m in (load("tensorrt_rtx_bindings"), load("tensorrt_lean")) if m is not None]
    if not refs:
        print("needs tensorrt_lean or tensorrt_rtx_bindings to resolve types", file=sys.stderr)
        return 2
    for label, files in (("runtime", RUNTIME_FILES), ("builder", BUILDER_FILES)):
        names = sorted({u.name for u in collect_files(files, refs)})
        print(f"{label} ({len(names)}): {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
