"""The fp16 converter keeps shape arithmetic in fp32 (DA3's position-embedding coordinates hit this)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _coordinate_graph(path):
    """x (1x3xHxW) + W-derived coordinates: Shape -> Gather -> Cast -> Mul(1/14) as a torch export writes."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="/shape"),
        helper.make_node("Gather", ["shape", "three"], ["w"], name="/gather", axis=0),
        helper.make_node("Cast", ["w"], ["wf"], name="/cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["wf", "scale"], ["coord"], name="/coord"),
        helper.make_node("Add", ["x", "coord"], ["y"], name="/add"),
        helper.make_node("Relu", ["y"], ["out"], name="/relu"),
    ]
    graph = helper.make_graph(
        nodes, "coords",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [numpy_helper.from_array(np.array(3, np.int64), "three"),
         numpy_helper.from_array(np.array(1 / 14, np.float32), "scale")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_shape_derived_nodes_stay_fp32_and_only_they(tmp_path):
    from depthrt_export.fp16 import convert, shape_nodes

    src, dst = tmp_path / "m.onnx", tmp_path / "m.fp16.onnx"
    _coordinate_graph(src)
    assert shape_nodes(onnx.load(str(src)).graph) == ["/shape", "/gather", "/cast", "/coord"]
    convert(src, dst)
    half = onnx.load(str(dst))
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(half).graph.value_info}
    node = {n.name: n for n in half.graph.node}
    assert types[node["/coord"].output[0]] == TensorProto.FLOAT  # the coordinate is computed in fp32 ...
    assert {i.name: i.data_type for i in half.graph.initializer}["scale"] == TensorProto.FLOAT
    assert types[node["/relu"].input[0]] == TensorProto.FLOAT16  # ... while the activations go fp16

    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 3, 5, 2100)).astype(np.float32)
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # 2100/14 = 150 exactly in fp32; in fp16 2100 itself is exact but the sum's rounding is the only error.
    assert np.allclose(got, want, rtol=2e-3, atol=2e-3 * 150)
