"""Profiles from the manifest, overrides, the build plan and its cache key, `--plan-only`."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from fakes import GPU_ENV, fake_bundle  # noqa: F401  (fake_bundle is a fixture)

from depthrt.errors import InputError
from depthrt.manifest import read_manifest
from depthrt_engines.config import BuildConfig, Range, parse_batch, parse_hw
from depthrt_engines.plan import cache_key, make_plan
from depthrt_engines.profiles import derive_profiles

SIZES = {"min": (266, 266), "opt": (518, 518), "max": (1036, 1036)}


def _graph(bundle):
    return read_manifest(bundle)["graphs"][0]


def test_profiles_default_to_the_manifest_ranges(fake_bundle):
    (profile,) = derive_profiles(_graph(fake_bundle), BuildConfig())
    assert (profile.name, profile.min, profile.opt, profile.max) == (
        "pixel_values", (1, 3, 126, 126), (1, 3, 518, 518), (8, 3, 2072, 2072))


def test_profiles_take_sizes_and_batch_overrides(fake_bundle):
    config = BuildConfig(sizes={"min": (266, 280), "opt": (518, 518), "max": (1036, 1022)}, batch=parse_batch("1:2:4"))
    (profile,) = derive_profiles(_graph(fake_bundle), config)
    assert profile.min == (1, 3, 266, 280) and profile.opt == (2, 3, 518, 518) and profile.max == (4, 3, 1036, 1022)
    assert derive_profiles(_graph(fake_bundle), BuildConfig(batch=parse_batch("2")))[0].max[0] == 2


@pytest.mark.parametrize("sizes, needle", [
    ({"min": (112, 112), "opt": (518, 518), "max": (1036, 1036)}, "outside the range"),
    ({"min": (266, 266), "opt": (518, 518), "max": (1000, 1000)}, "use 994 or 1008"),
])
def test_profile_overrides_the_manifest_does_not_allow_are_refused(fake_bundle, sizes, needle):
    with pytest.raises(InputError, match=needle):
        derive_profiles(_graph(fake_bundle), BuildConfig(sizes=sizes))


@pytest.mark.parametrize("make", [
    lambda: BuildConfig(sizes={"min": (518, 518), "opt": (266, 266), "max": (1036, 1036)}),
    lambda: BuildConfig(precision="int4"),
    lambda: BuildConfig(opt_level=9),
    lambda: BuildConfig(batch=Range(4, 1, 8)),
    lambda: parse_hw("518", "--min"),
    lambda: parse_batch("1:2"),
    lambda: BuildConfig(target="trt", compute_capabilities=("8.9",)),
])
def test_bad_options_are_refused(make):
    with pytest.raises(InputError):
        make()


def test_cache_key_changes_with_every_input(fake_bundle):
    graph = _graph(fake_bundle)
    base_config = BuildConfig(precision="fp16", sizes=SIZES)
    base = cache_key(make_plan(graph, base_config, GPU_ENV))
    assert base == cache_key(make_plan(dict(graph), BuildConfig(precision="fp16", sizes=dict(SIZES)), GPU_ENV))
    variants = {
        "onnx": (dict(graph, sha256="0" * 64), base_config, GPU_ENV),
        "precision": (graph, dataclasses.replace(base_config, precision="bf16"), GPU_ENV),
        "sizes": (graph, dataclasses.replace(base_config, sizes={**SIZES, "opt": (532, 518)}), GPU_ENV),
        "batch": (graph, dataclasses.replace(base_config, batch=Range(1, 1, 4)), GPU_ENV),
        "opt level": (graph, dataclasses.replace(base_config, opt_level=5), GPU_ENV),
        "workspace": (graph, dataclasses.replace(base_config, workspace_mib=2048), GPU_ENV),
        "target": (graph, dataclasses.replace(base_config, target="trt-rtx", precision="fp32"), GPU_ENV),
        "tensorrt": (graph, base_config, dataclasses.replace(GPU_ENV, tensorrt_version="10.14.1.48")),
        "gpu": (graph, base_config, dataclasses.replace(GPU_ENV, gpu_name="NVIDIA H100 80GB HBM3")),
        "capability": (graph, base_config, dataclasses.replace(GPU_ENV, compute_capability="8.9")),
    }
    keys = {what: cache_key(make_plan(*args)) for what, args in variants.items()}
    assert all(key != base for key in keys.values()), keys
    assert len(set(keys.values())) == len(keys)


def test_fp16_pins_overflow_prone_layers_and_fp32_or_strongly_typed_do_not(fake_bundle):
    graph = _graph(fake_bundle)
    fp16 = make_plan(graph, BuildConfig(precision="fp16"), GPU_ENV)
    assert {r.name for r in fp16.pin_rules} >= {"normalization", "softmax", "attention-scores", "head"}
    assert make_plan(graph, BuildConfig(), GPU_ENV).pin_rules == ()
    rtx = make_plan(graph, BuildConfig(target="trt-rtx"), GPU_ENV)
    assert rtx.pin_rules == () and "strongly typed" in rtx.precision_mode


def test_plan_only_prints_profiles_and_key_without_tensorrt(fake_bundle, tmp_path):
    out = tmp_path / "plan.json"
    argv = ["build", str(fake_bundle), "--precision", "fp16", "--min", "266x266", "--opt", "518x518",
            "--max", "1036x1036", "--plan-only", "--json", str(out)]
    probe = ("import sys\nfrom depthrt.cli import main\n"
             f"code = main({argv!r})\n"
             "loaded = [m for m in ('tensorrt', 'tensorrt_rtx_bindings') if m in sys.modules]\n"
             "print('LOADED', loaded)\nsys.exit(code)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pixel_values: 1x3x266x266 / 1x3x518x518 / 8x3x1036x1036" in result.stdout
    assert "LOADED []" in result.stdout
    data = json.loads(out.read_text())
    (plan,) = data["plans"]
    assert plan["cache_key"] in result.stdout and f"cache key   {plan['cache_key']}" in result.stdout
    assert plan["profiles"]["pixel_values"]["max"] == [8, 3, 1036, 1036]
    assert {p["rule"] for p in plan["pinned_fp32"]} >= {"normalization", "softmax"}
