"""Test helpers shared by the Lotus and LBM tests: bundles from a family's export entry, made once each."""

from __future__ import annotations

import shutil
from pathlib import Path


def write_bundle(module, preset_name: str, weights, out: Path) -> Path:
    """The family's export entry + the fields the exporter adds, validated: a loadable bundle."""
    from depthrt.manifest import SCHEMA_VERSION, validate_manifest, write_json_atomic
    from depthrt.presets import find_preset

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    fields = module.export(find_preset(preset_name), str(weights), out, 17)
    manifest = {"schema_version": SCHEMA_VERSION, "created": "test", **fields, "tools": {}, "parity": None}
    validate_manifest(manifest)
    write_json_atomic(out / "manifest.json", manifest)
    return out


def load_bundle(bundle: Path):
    from depthrt.diffusion import load_diffusion
    from depthrt.manifest import read_manifest

    return load_diffusion(bundle, read_manifest(bundle), "ort-cpu")


def family_maker(root: Path, module, write_tiny, tiny_names: dict, load_parts):
    """make(preset) -> (checkpoint folder, estimator, load_parts(checkpoint, preset)): a tiny checkpoint
    (``write_tiny(tiny_names[preset], folder, seed=0)``), its bundle and its torch parts, once per preset."""
    made = {}

    def make(preset: str):
        if preset not in made:
            ckpt = write_tiny(tiny_names[preset], root / tiny_names[preset], seed=0)
            bundle = write_bundle(module, preset, ckpt, root / f"bundle-{preset}")
            made[preset] = (ckpt, load_bundle(bundle), load_parts(ckpt, preset))
        return made[preset]

    return make
