"""Every TensorRT name our runner and builder use is in TensorRT 11's real bindings, and none is one it removed.

The names come from the code (trt_api.py walks it), not from a hand-kept list. The runner's names are
checked against ``tensorrt_lean`` (TensorRT 11.4's runtime bindings: what `pip install tensorrt-lean-cu13`
installs) and against TensorRT-RTX (whose runtime the ``trt-rtx`` backend uses); the builder's against
TensorRT-RTX's bindings (a strongly typed builder with TensorRT's API; no full TensorRT 11 builder installs
without a GPU) and, where the lean bindings have the same class (``BuilderFlag``, ``MemoryPoolType``), against
those too. CI installs both (.ci/run).
"""

from __future__ import annotations

import pytest
from trt_api import BUILDER_FILES, RUNTIME_FILES, Collector, collect_files, load, missing

LEAN = load("tensorrt_lean")
RTX = load("tensorrt_rtx_bindings")
REFERENCES = [m for m in (RTX, LEAN) if m is not None]
needs_lean = pytest.mark.skipif(LEAN is None, reason="TensorRT 11's lean runtime bindings are not installed: "
                                                     "pip install tensorrt-lean-cu13")
needs_rtx = pytest.mark.skipif(RTX is None, reason="TensorRT-RTX is not installed: "
                                                   "pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs")
pytestmark = [needs_lean, needs_rtx]


@pytest.fixture(scope="module")
def runtime_uses():
    return collect_files(RUNTIME_FILES, REFERENCES)


@pytest.fixture(scope="module")
def builder_uses():
    return collect_files(BUILDER_FILES, REFERENCES)


def test_the_collector_sees_the_calls_that_matter(runtime_uses, builder_uses):
    # A guard against a collector that silently finds nothing; the checks below use everything it finds.
    runtime = {u.name for u in runtime_uses}
    builder = {u.name for u in builder_uses}
    assert {"Runtime.deserialize_cuda_engine", "IExecutionContext.execute_async_v3",
            "IExecutionContext.set_tensor_address", "ICudaEngine.get_tensor_mode"} <= runtime
    assert {"Builder.build_serialized_network", "trt.BuilderFlag.TF32", "IBuilderConfig.set_flag",
            "OnnxParser.parse_from_file", "IProgressMonitor.phase_start"} <= builder


def test_runner_names_exist_in_tensorrt_11_lean_and_tensorrt_rtx(runtime_uses):
    assert missing(runtime_uses, LEAN) == []
    assert missing(runtime_uses, RTX) == []


def test_builder_names_exist_in_tensorrt_rtx_and_tensorrt_11(builder_uses):
    assert missing(builder_uses, RTX) == []
    assert missing(builder_uses, LEAN, required=False) == []


BAD_BUILDER = '''
import tensorrt as trt

def build(logger, network: trt.INetworkDefinition):
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    config.set_flag(trt.BuilderFlag.DIRECT_IO)
    config.int8_calibrator = None
    fast = builder.platform_has_fast_fp16
    layer = network.get_layer(0)
    layer.precision = trt.float32
    return builder.build_serialized_network(network, config)

def run(data: bytes):
    engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(data)
    return engine.device_memory_size
'''


def test_a_name_tensorrt_11_removed_fails_the_check():
    uses = Collector(REFERENCES).collect(BAD_BUILDER)
    problems = "\n".join(missing(uses, RTX) + missing(uses, LEAN, required=False))
    for name in ("trt.BuilderFlag.FP16", "trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS",
                 "trt.BuilderFlag.DIRECT_IO",  # still in the 11.4 bindings: the guide's list catches it
                 "IBuilderConfig.int8_calibrator", "Builder.platform_has_fast_fp16", "ILayer.precision",
                 "ICudaEngine.device_memory_size"):
        assert name in problems, problems
    assert "Builder.build_serialized_network" not in problems  # a name TensorRT 11 keeps is not reported
    assert "tensorrt_lean has no BuilderFlag.FP16" in problems  # checked against the real module, not a list


def test_a_removed_name_added_to_our_builder_fails_the_check():
    """What the test above proves on a snippet, on our own builder with one line added."""
    source = next(p for p in BUILDER_FILES if p.name == "trt_build.py").read_text(encoding="utf-8")
    anchor = "    config.clear_flag(trt.BuilderFlag.TF32)\n"
    assert anchor in source
    uses = Collector(REFERENCES).collect(source.replace(anchor, anchor + "    config.set_flag(trt.BuilderFlag.FP16)\n"),
                                         "trt_build.py")
    problems = missing(uses, RTX)
    assert any(p.startswith("trt.BuilderFlag.FP16 (trt_build.py:") for p in problems), problems
