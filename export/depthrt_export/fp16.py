"""The fp16 variant of a bundle's graphs: fp16 everywhere except islands kept in fp32.

The islands are what overflows or loses too much in half precision: normalisation layers
(LayerNormalization, GroupNormalization, InstanceNormalization and the ops of decomposed norms),
Softmax together with the attention-score chain that feeds it (the Q.K^T MatMul and its scale),
and the final head (the modules named ``head`` / ``metric_head``: a few cheap convolutions whose
output is the depth map itself). The graph keeps fp32 inputs and outputs, so a runtime feeds it
exactly as the fp32 graph. ONNX Runtime's ``float16`` converter inserts the casts.

The variant is an extra entry in the manifest's ``graphs``: the same ``name`` with
``"precision": "fp16"``, its own file, hash and size, and ``fp32_islands`` recording what stayed
fp32. Add it to an existing bundle with::

    python -m depthrt_export.fp16 BUNDLE
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from depthrt.errors import BundleError
from depthrt.manifest import MANIFEST_NAME, read_manifest, sha256_file, validate_manifest, write_json_atomic

# Normalisations and the pieces of decomposed ones (x - mean) / sqrt(var + eps).
FP32_OPS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "BatchNormalization",
            "Softmax", "ReduceMean", "Pow", "Sqrt", "Reciprocal")
# Module scopes kept whole in fp32 (torch names nodes "/model/<module path>/<op>").
HEAD_SCOPES = ("head", "metric_head")
LARGE = 1900 * 1024**2  # weights above this go to external data (protobuf's limit is 2 GB)
# Ops between an attention score MatMul and its Softmax (scale, bias, mask).
_SCORE_CHAIN = ("Div", "Mul", "Add", "Where", "Cast")


def attention_score_nodes(graph) -> list[str]:
    """Names of the nodes computing attention scores: from each Softmax back to its MatMul."""
    producer = {out: node for node in graph.node for out in node.output}
    keep = []
    for node in graph.node:
        if node.op_type != "Softmax":
            continue
        frontier = [node.input[0]]
        for _ in range(6):  # a short chain: MatMul -> Div/Mul -> Add(bias) -> Where(mask) -> Softmax
            nxt = []
            for name in frontier:
                src = producer.get(name)
                if src is None:
                    continue
                if src.op_type == "MatMul":
                    keep.append(src.name)
                elif src.op_type in _SCORE_CHAIN:
                    keep.append(src.name)
                    nxt.extend(src.input)
            frontier = nxt
    return keep


def head_nodes(graph, scopes=HEAD_SCOPES) -> list[str]:
    """Names of nodes inside any of ``scopes`` (a path component of the node name)."""
    out = []
    for node in graph.node:
        parts = node.name.strip("/").split("/")
        if any(s in parts[:-1] for s in scopes):
            out.append(node.name)
    return out


def toposort(graph) -> None:
    """Order ``graph.node`` topologically, in place (the converter appends its casts at the end)."""
    produced = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in produced for i in node.input):
                ordered.append(node)
                produced.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise BundleError(f"graph has a cycle or an undefined input at node '{rest[0].name}'")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def convert(src: str | Path, dst: str | Path, scopes=HEAD_SCOPES) -> dict:
    """Write the fp16-with-fp32-islands version of the ONNX graph ``src`` to ``dst``; return the islands."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    infer = True
    if sum(len(t.raw_data) for t in model.graph.initializer) > LARGE:
        # Shape inference on an in-memory proto above protobuf's 2 GB fails: infer on the files
        # instead (beside the source, so its external data is found) and let the converter skip it.
        inferred = Path(src).with_name(Path(src).stem + ".shapes.onnx")
        try:
            onnx.shape_inference.infer_shapes_path(str(src), str(inferred))
            model = onnx.load(str(inferred))
        finally:
            inferred.unlink(missing_ok=True)
        infer = False
    named = {n.name for n in model.graph.node}
    unnamed = 0
    for i, node in enumerate(model.graph.node):  # the converter blocks nodes by name: every node needs one
        if not node.name:
            node.name = f"_depthrt_node_{i}"
            unnamed += 1
    blocked_nodes = sorted(set(attention_score_nodes(model.graph)) | set(head_nodes(model.graph, scopes)))
    op_block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS))
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=op_block,
                                    node_block_list=blocked_nodes, disable_shape_infer=not infer)
    toposort(half.graph)
    big = sum(len(t.raw_data) for t in half.graph.initializer) > LARGE
    if big:
        onnx.save_model(half, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=Path(dst).name + ".data", size_threshold=1024)
    else:
        onnx.save_model(half, str(dst))
    onnx.checker.check_model(str(dst))
    present = {n.op_type for n in model.graph.node}
    return {
        "op_types": [op for op in FP32_OPS if op in present],
        "scopes": [s for s in scopes if any(n in named for n in head_nodes(model.graph, (s,)))],
        "nodes": len(blocked_nodes) + sum(1 for n in model.graph.node if n.op_type in FP32_OPS),
        "external_data": big,
    }


def make_variant(bundle: str | Path, graph: dict, scopes=HEAD_SCOPES) -> dict:
    """The fp16 manifest entry for ``graph`` (an fp32 entry), writing its file beside it in ``bundle``."""
    bundle = Path(bundle)
    stem = graph["file"][: -len(".onnx")]
    file = f"{stem}.fp16.onnx"
    islands = convert(bundle / graph["file"], bundle / file, scopes)
    entry = {k: v for k, v in graph.items() if k not in ("sha256", "bytes", "file", "external_data")}
    entry.update({
        "file": file,
        "external_data": file + ".data" if islands.pop("external_data") else None,
        "sha256": sha256_file(bundle / file),
        "bytes": (bundle / file).stat().st_size,
        "precision": "fp16",
        "fp32_islands": islands,
    })
    return entry


def add_fp16_variants(bundle: str | Path) -> dict:
    """Add (or replace) the fp16 variant of every fp32 graph of ``bundle``; return the new manifest."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    fp32 = [g for g in manifest["graphs"] if g.get("precision", "fp32") == "fp32"]
    if not fp32:
        raise BundleError(f"bundle '{bundle}' has no fp32 graph to convert")
    graphs = [g for g in manifest["graphs"] if g.get("precision", "fp32") != "fp16"]
    graphs += [make_variant(bundle, g) for g in fp32]
    manifest["graphs"] = graphs
    validate_manifest(manifest, where="the manifest being written")
    write_json_atomic(bundle / MANIFEST_NAME, manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m depthrt_export.fp16",
                                     description="add fp16 (with fp32 islands) variants of a bundle's graphs")
    parser.add_argument("bundle")
    args = parser.parse_args(argv)
    try:
        manifest = add_fp16_variants(args.bundle)
    except BundleError as exc:
        print(f"fp16: error: {exc}", file=sys.stderr)
        return 2
    for g in manifest["graphs"]:
        if g.get("precision") == "fp16":
            isl = g["fp32_islands"]
            print(f"{g['file']}: fp16, {isl['nodes']} nodes kept fp32 ({', '.join(isl['op_types'] + isl['scopes'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
