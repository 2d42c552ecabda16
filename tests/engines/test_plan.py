"""Profiles from the manifest, overrides, the build plan and its cache key, `--plan-only`."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from fakes import GPU_ENV, fake_bundle, write_fake_bundle  # noqa: F401  (fake_bundle is a fixture)

from depthrt.errors import InputError
from depthrt.manifest import read_manifest
from depthrt_engines.config import BuildConfig, Range, parse_batch, parse_hw
from depthrt_engines.build import make_plans
from depthrt_engines.plan import cache_key, format_plan, make_plan
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
        "tensorrt": (graph, base_config, dataclasses.replace(GPU_ENV, tensorrt_version="11.3.0.10")),
        "version compatible": (graph, dataclasses.replace(base_config, version_compatible=True), GPU_ENV),
        "gpu": (graph, base_config, dataclasses.replace(GPU_ENV, gpu_name="NVIDIA H100 80GB HBM3")),
        "capability": (graph, base_config, dataclasses.replace(GPU_ENV, compute_capability="8.9")),
    }
    keys = {what: cache_key(make_plan(*args)) for what, args in variants.items()}
    assert all(key != base for key in keys.values()), keys
    assert len(set(keys.values())) == len(keys)


@pytest.mark.parametrize("target", ["trt", "trt-rtx"])
def test_every_plan_is_strongly_typed_from_the_graph_of_its_precision(fake_bundle, target):
    fp16, = make_plans(fake_bundle, BuildConfig(precision="fp16", target=target), GPU_ENV)
    assert (fp16.graph_name, fp16.onnx_file, fp16.graph_precision) == ("model", "model.fp16.onnx", "fp16")
    assert fp16.source_sha256 == _graph(fake_bundle)["sha256"]  # the runtime matches it to the fp32 graph it opens
    fp32, = make_plans(fake_bundle, BuildConfig(target=target), GPU_ENV)
    assert (fp32.onnx_file, fp32.graph_precision) == ("model.onnx", "fp32")
    for plan in (fp16, fp32):
        assert plan.precision_mode.startswith("strongly typed") and plan.onnx_file in plan.precision_mode
        assert "pinned" not in json.dumps(plan.to_dict())


def test_reduced_precision_without_its_variant_names_the_command_that_makes_it(tmp_path):
    bundle = write_fake_bundle(tmp_path / "no-fp16", fp16=False)
    with pytest.raises(InputError) as err:
        make_plans(bundle, BuildConfig(precision="fp16"), GPU_ENV)
    assert "graph 'model' has none" in str(err.value)
    assert f"`python -m depthrt_export.fp16 {bundle}`" in str(err.value)
    with pytest.raises(InputError, match="no bf16 variants; build with --precision fp16 or fp32"):
        make_plans(bundle, BuildConfig(precision="bf16"), GPU_ENV)


def test_version_compatible_plans_load_in_the_lean_runtime_and_change_the_key(fake_bundle):
    plain, = make_plans(fake_bundle, BuildConfig(precision="fp16"), GPU_ENV)
    compatible, = make_plans(fake_bundle, BuildConfig(precision="fp16", version_compatible=True), GPU_ENV)
    assert plain.runtimes == ["tensorrt"] and compatible.runtimes == ["tensorrt_lean", "tensorrt"]
    assert plain.key != compatible.key and "--version-compatible" in compatible.config.command_args()
    assert "loads with  tensorrt_lean or tensorrt" in format_plan(compatible, "B")
    with pytest.raises(InputError, match="--version-compatible is for --target trt"):
        BuildConfig(target="trt-rtx", version_compatible=True)


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
    assert plan["onnx_file"] == "model.fp16.onnx" and plan["runtimes"] == ["tensorrt"]
    assert "graph model: builds from model.fp16.onnx" in result.stdout
    assert "precision   fp16: strongly typed: fp16 with fp32 islands from the fp16 variant graph model.fp16.onnx" \
        in result.stdout
    assert "obey" not in result.stdout and "pinned" not in result.stdout
