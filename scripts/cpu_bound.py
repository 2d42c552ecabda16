"""How fast can this CPU run a bundle's graph at best? Counts the graph's multiply-accumulate work at
the size an image is processed at, measures this machine's matrix-multiply peak (OpenVINO, fp32 and
bf16, the best of square MatMuls of 1024, 2048 and 3072 on the same threads), and prints the lower
bound on inference time that follows, with the most any backend could gain over a reference time.

    python scripts/cpu_bound.py BUNDLE [--image 640x480] [--graph model] [--threads N]
                                [--reference-ms 1335.8] [--json FILE]

The bound counts MatMul/Gemm/Conv/ConvTranspose only (norms, softmax, GELU and resizes come on top),
each at the best throughput a single large MatMul reaches here: no real graph gets below it.
Needs the export extras (onnx) and OpenVINO.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

WORK_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
PEAK_SIZES = (1024, 2048, 3072)  # a shared machine's throughput wanders: take the best of several


def graph_flops(onnx_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """FLOPs (2 per multiply-accumulate) of the graph's matrix and convolution ops, per op type,
    with shapes taken from a real run (ONNX Runtime, every operand exposed as an output)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    consts = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    for node in model.graph.node:  # Constant nodes carry weights too in some exports
        if node.op_type == "Constant":
            consts[node.output[0]] = tuple(numpy_helper.to_array(node.attribute[0].t).shape)
    work = [n for n in model.graph.node if n.op_type in WORK_OPS]
    wanted = {name for n in work for name in (*n.input[:2], n.output[0]) if name and name not in consts}
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in sorted(wanted - outputs))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every name
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = session.run(None, feeds)
    shapes = dict(consts)
    shapes.update({o.name: v.shape for o, v in zip(session.get_outputs(), values)})
    totals: dict[str, float] = {}
    for node in work:
        out, a, w = shapes[node.output[0]], shapes[node.input[0]], shapes[node.input[1]]
        if node.op_type in ("MatMul", "Gemm"):
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            inner = a[-2] if trans_a else a[-1]
            kind = "MatMul (weights)" if node.input[1] in consts else "MatMul (activations: attention)"
            flops = 2.0 * float(np.prod(out)) * inner
        elif node.op_type == "Conv":
            kind, flops = "Conv", 2.0 * float(np.prod(out)) * float(np.prod(w[1:]))
        else:  # ConvTranspose: every input pixel meets the whole kernel once
            kind, flops = "ConvTranspose", 2.0 * float(np.prod(a)) * float(np.prod(w[1:]))
        totals[kind] = totals.get(kind, 0.0) + flops
    return totals


def matmul_peak(precision: str, threads: int, n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of one n x n x n MatMul through OpenVINO's CPU plugin at ``precision``."""
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], np.float32, name="a")
    b = ops.constant(rng.random((n, n), dtype=np.float32))
    model = ov.Model([ops.matmul(a, b, False, False)], [a])
    config = {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
              "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    x = rng.random((n, n), dtype=np.float32)
    for _ in range(2):
        request.infer({0: x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        request.infer({0: x})
        times.append(time.perf_counter() - start)
    return 2.0 * n ** 3 / min(times) / 1e9


def main(argv: list[str] | None = None) -> int:
    from depthrt import processing
    from depthrt.backends import usable_cores
    from depthrt.backends.openvino import supports_bf16
    from depthrt.bench import parse_size
    from depthrt.manifest import read_manifest

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--image", type=parse_size, default=(480, 640), metavar="WxH",
                        help="size of the input image (default 640x480)")
    parser.add_argument("--graph", default=None, help="graph to count (default: the bundle's first)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--reference-ms", type=float, default=None,
                        help="end-to-end time of the reference (e.g. PyTorch eager) to bound the speed-up")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    manifest = read_manifest(args.bundle)
    graphs = manifest["graphs"]
    graph = next((g for g in graphs if g["name"] == args.graph), None) if args.graph else graphs[0]
    if graph is None:
        print(f"error: no graph '{args.graph}' in the bundle (it has {', '.join(g['name'] for g in graphs)})",
              file=sys.stderr)
        return 2
    height, width = args.image
    image = np.zeros((height, width, 3), np.uint8)
    pixels, _ = processing.preprocess(image, manifest["preprocessing"])
    if len(graph["inputs"]) != 1:
        print("error: only single-input graphs are counted", file=sys.stderr)
        return 2
    feeds = {graph["inputs"][0]["name"]: pixels[None]}
    threads = args.threads or usable_cores()

    flops = graph_flops(args.bundle / graph["file"], feeds)
    total = sum(flops.values())
    import openvino as ov

    precisions = ["fp32"] + (["bf16"] if supports_bf16(ov.Core()) else [])
    peaks = {p: max(matmul_peak(p, threads, n) for n in PEAK_SIZES) for p in precisions}
    print(f"graph '{graph['name']}' at {pixels.shape[1]}x{pixels.shape[2]} (image {width}x{height}):")
    for kind, value in sorted(flops.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:34s} {value / 1e9:8.1f} GFLOP")
    print(f"  {'total':34s} {total / 1e9:8.1f} GFLOP")
    report = {"graph": graph["name"], "model_size": list(pixels.shape[1:]), "image": [height, width],
              "threads": threads, "gflop": {k: v / 1e9 for k, v in flops.items()}, "precisions": {}}
    for precision, peak in peaks.items():
        bound_ms = total / (peak * 1e9) * 1e3
        line = f"{precision}: MatMul peak {peak:6.1f} GFLOP/s on {threads} threads -> inference >= {bound_ms:7.1f} ms"
        entry = {"matmul_peak_gflops": peak, "inference_lower_bound_ms": bound_ms}
        if args.reference_ms:
            entry["max_speedup"] = args.reference_ms / bound_ms
            line += f", speed-up over {args.reference_ms:.1f} ms <= {entry['max_speedup']:.2f}x"
        report["precisions"][precision] = entry
        print(line)
    if not supports_bf16(ov.Core()):
        print("bf16: this CPU has neither AVX512-BF16 nor AMX")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
