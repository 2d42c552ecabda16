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

Latent-diffusion bundles (a manifest ``loop``: Marigold, Lotus, LBM) get *calibrated* islands on top
(see "calibrated islands" below): what overflows fp16 on a calibration run of the fp32 graph stays
fp32, which the SD/SDXL VAE decoders need; their variants always keep weights in external data.
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


def shape_nodes(graph) -> list[str]:
    """Names of nodes computed from tensor shapes: a ``Shape`` and whatever reads only its outputs,
    other shape-derived tensors and constants (position-embedding coordinates, resize scales).

    Such arithmetic is exact in fp32 but not in fp16 (integers above 2048 round), and a strongly typed
    builder refuses the fp16/fp32 mixes the converter leaves in it (TensorRT-RTX on DA3: "element type
    (float) differs from ... (half)"). It is scalars and small vectors: keeping it fp32 costs nothing.
    """
    consts = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    derived: set[str] = set()
    out = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        inputs = [i for i in node.input if i]
        if node.op_type == "Shape" or (any(i in derived for i in inputs)
                                       and all(i in derived or i in consts for i in inputs)):
            derived.update(node.output)
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


def drop_round_trip_casts(graph) -> int:
    """Remove the fp32 -> fp16 -> fp32 Cast pairs the converter leaves between two fp32 nodes (it casts
    every blocked node's output to fp16 and back for the next blocked node, which would round the
    islands' own values to fp16: an overflow there becomes inf). Returns how many pairs went."""
    from onnx import TensorProto

    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}

    def cast_to(node):
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    rename = {}
    for node in graph.node:
        if cast_to(node) != TensorProto.FLOAT or node.output[0] in outputs:
            continue
        first = producer.get(node.input[0])
        if first is not None and cast_to(first) == TensorProto.FLOAT16 and types.get(first.input[0]) == TensorProto.FLOAT:
            rename[node.output[0]] = first.input[0]
    if not rename:
        return 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    used = {i for node in graph.node for i in node.input} | outputs
    keep = [n for n in graph.node if n.op_type != "Cast" or any(o in used for o in n.output)]
    while len(keep) != len(graph.node):  # the pair's fp16 half may now be unused too
        del graph.node[:]
        graph.node.extend(keep)
        used = {i for node in graph.node for i in node.input} | outputs
        keep = [n for n in graph.node if n.op_type != "Cast" or any(o in used for o in n.output)]
    return len(rename)


def initializer_bytes(graph) -> int:
    """Bytes of ``graph``'s initializers, whether their data is loaded or still in external data."""
    import math

    from onnx import TensorProto, helper

    total = 0
    for t in graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            length = next((e.value for e in t.external_data if e.key == "length"), None)
            total += int(length) if length is not None else math.prod(t.dims) * helper.tensor_dtype_to_np_dtype(
                t.data_type).itemsize
        else:
            total += len(t.raw_data) or t.ByteSize()
    return total


def convert(src: str | Path, dst: str | Path, scopes=HEAD_SCOPES, keep_nodes=(), external: bool | None = None) -> dict:
    """Write the fp16-with-fp32-islands version of the ONNX graph ``src`` to ``dst``; return the islands.

    ``keep_nodes``: names of further nodes kept in fp32 (the calibrated ones of the diffusion graphs);
    ``external``: weights in ``<dst>.data`` always (True), or only above protobuf's limit (None).
    """
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # The weights are read once: the header first (their size decides the path), then either the
    # external data into it or, above protobuf's 2 GB, the shape-inferred copy (which would otherwise
    # sit beside a first full copy: two copies of a 5 GB UNet at once).
    model = onnx.load(str(src), load_external_data=False)
    infer = True
    if initializer_bytes(model.graph) > LARGE:
        # Shape inference on an in-memory proto above protobuf's 2 GB fails: infer on the files
        # instead (beside the source, so its external data is found) and let the converter skip it.
        del model
        inferred = Path(src).with_name(Path(src).stem + ".shapes.onnx")
        try:
            onnx.shape_inference.infer_shapes_path(str(src), str(inferred))
            model = onnx.load(str(inferred))
        finally:
            inferred.unlink(missing_ok=True)
        infer = False
    else:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(Path(src).parent))
    named = {n.name for n in model.graph.node}
    unnamed = 0
    for i, node in enumerate(model.graph.node):  # the converter blocks nodes by name: every node needs one
        if not node.name:
            node.name = f"_depthrt_node_{i}"
            unnamed += 1
    blocked_nodes = sorted(set(attention_score_nodes(model.graph)) | set(head_nodes(model.graph, scopes))
                           | set(shape_nodes(model.graph)) | set(keep_nodes))
    op_block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS))
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=op_block,
                                    node_block_list=blocked_nodes, disable_shape_infer=not infer)
    drop_round_trip_casts(half.graph)
    toposort(half.graph)
    big = sum(len(t.raw_data) for t in half.graph.initializer) > LARGE if external is None else external
    if big:
        Path(str(dst) + ".data").unlink(missing_ok=True)  # save_model appends to an existing data file
        onnx.save_model(half, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=Path(dst).name + ".data", size_threshold=1024)
    else:
        onnx.save_model(half, str(dst))
    onnx.checker.check_model(str(dst))
    present = {n.op_type for n in model.graph.node}
    return {
        "op_types": [op for op in FP32_OPS if op in present],
        "scopes": [s for s in scopes if any(n in named for n in head_nodes(model.graph, (s,)))],
        "nodes": len(set(blocked_nodes) | {n.name for n in model.graph.node if n.op_type in FP32_OPS}),
        "external_data": big,
    }


def make_variant(bundle: str | Path, graph: dict, scopes=HEAD_SCOPES, keep_nodes=(), external: bool | None = None,
                 calibration: dict | None = None) -> dict:
    """The fp16 manifest entry for ``graph`` (an fp32 entry), writing its file beside it in ``bundle``.

    ``keep_nodes``, ``external``: see :func:`convert`; ``calibration``: fields recorded in
    ``fp32_islands`` (rule, threshold, max_abs, pinned) when ``keep_nodes`` came from a calibration run.
    """
    bundle = Path(bundle)
    stem = graph["file"][: -len(".onnx")]
    file = f"{stem}.fp16.onnx"
    islands = convert(bundle / graph["file"], bundle / file, scopes, keep_nodes, external)
    islands.update(calibration or {})
    entry = {k: v for k, v in graph.items() if k not in ("sha256", "bytes", "file", "external_data")}
    entry.update({
        "file": file,
        "external_data": file + ".data" if islands.pop("external_data") else None,
        "sha256": sha256_file(bundle / file),
        "bytes": (bundle / file).stat().st_size,
        "precision": "fp16",
        "fp32_islands": islands,
    })
    if "parity_kit" in entry:  # the fp32 graph's Polygraphy kit (same inputs and reference), with fp16 limits
        from .kit import with_tolerances

        with_tolerances([entry])
    return entry


# --------------------------------------------------------------------------- calibrated islands
# The latent-diffusion graphs (VAE encoder/decoder, UNet) are not safe with fixed islands alone: the
# SD/SDXL VAE decoders carry activations far above fp16's range through convolutions and residual
# additions (the reason for diffusers' ``force_upcast`` and madebyollin/sdxl-vae-fp16-fix), and a
# GroupNorm kept in fp32 cannot help once its input was rounded to inf in fp16. So these graphs are
# calibrated: the fp32 graph runs on realistic inputs with max|x| of every float tensor measured
# (an Abs + ReduceMax per tensor, so only scalars come back), and every node that reads or writes a
# tensor above FP16_MAX / HEADROOM stays fp32, on top of the fixed islands (norms, softmax and the
# attention scores). Every consumer of an over-range tensor is then fp32 too, so no over-range value
# is ever cast to fp16; the headroom covers inputs larger than the calibration's.
FP16_MAX = 65504.0
HEADROOM = 4.0
CALIBRATION_EDGE = 256  # long edge (pixels) of the calibration images; latents are 1/8 of it
CALIBRATION_TIMESTEPS = (999.0, 500.0, 250.0)
CALIBRATION_RULE = ("fp32 where a node reads or writes a float tensor above 65504/{h:g} = {t:g} in magnitude on "
                    "the fp32 calibration run ({what}), plus norms, softmax, attention scores and the UNet's "
                    "timestep embedding (timestep to its first linear layer)")


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc's ``malloc_trim``). Freed
    protobuf / torch buffers of a few MB each stay in the process' heap otherwise: after a 5 GB UNet
    export that is ~9 GB of resident memory the next step cannot use for its own large buffers."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
        pass


UNCALIBRATED_RULE = ("not calibrated: the graph's weights are stored as fp16 (an SDXL-sized UNet), whose calibration "
                     "run does not fit a 24 GiB export machine; fp32 islands by rule only: norms, softmax, attention "
                     "scores and the UNet's timestep embedding (timestep to its first linear layer)")


def stores_fp16_weights(graph) -> bool:
    """Whether ``graph`` keeps (some of) its weights as fp16 initializers, cast to fp32 where used."""
    from onnx import TensorProto

    return any(t.data_type == TensorProto.FLOAT16 for t in graph.initializer)


def _node_names(graph) -> list[str]:
    """Node names as :func:`convert` sees them (unnamed nodes get the same generated names)."""
    return [node.name or f"_depthrt_node_{i}" for i, node in enumerate(graph.node)]


def activation_maxima(path: str | Path, feeds_list: list[dict], threads: int | None = None) -> dict[str, float]:
    """max |x| over ``feeds_list`` of every float tensor of the fp32 ONNX graph ``path`` (graph inputs and
    node outputs), by name. The weights stay where they are (external data beside ``path``)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    typed = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*typed.graph.value_info, *typed.graph.input, *typed.graph.output)}
    del typed
    initializers = {t.name for t in model.graph.initializer}
    probes, seen, graph_outputs = [], set(), model.graph.output

    def probed(names):  # the Abs + ReduceMax probes of the float tensors ``names``
        nodes = []
        for name in names:
            if not name or name in seen or name in initializers or types.get(name) != TensorProto.FLOAT:
                continue
            seen.add(name)
            out = f"_depthrt_amax_{len(probes)}"
            nodes += [helper.make_node("Abs", [name], [out + "_abs"]),
                      helper.make_node("ReduceMax", [out + "_abs"], [out], keepdims=0)]
            graph_outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, []))
            probes.append((name, out))
        return nodes

    # Each probe right after the node writing its tensor, run in that order (PRIORITY_BASED: the ready
    # node first in the graph's order): probes appended at the end of the graph may be scheduled last,
    # which keeps every activation alive until then (12 GB on the SDXL VAE decoder's calibration).
    nodes = probed(i.name for i in model.graph.input)
    for node in model.graph.node:
        nodes += [node, *probed(node.output)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    probe = path.with_name(f".{path.stem}.calibration.onnx")  # beside the graph: its external data resolves
    try:
        onnx.save_model(model, str(probe))
        del model
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.log_severity_level = 3
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(probe), sess_options=options, providers=["CPUExecutionProvider"])
        maxima = dict.fromkeys((n for n, _ in probes), 0.0)
        outs = [o for _, o in probes]
        for feeds in feeds_list:
            for (name, _), value in zip(probes, session.run(outs, feeds)):
                v = float(np.asarray(value))
                maxima[name] = v if np.isnan(v) else max(maxima[name], v)
        del session
    finally:
        probe.unlink(missing_ok=True)
    return maxima


def calibrated_nodes(path: str | Path, feeds_list: list[dict], headroom: float = HEADROOM,
                     threads: int | None = None) -> tuple[list[str], dict]:
    """The nodes of ``path`` to keep in fp32 (a float input or output above FP16_MAX / ``headroom`` on the
    calibration run, or NaN there) and the figures: ``threshold``, ``max_abs`` and the ``hottest`` tensor."""
    import math

    import onnx

    maxima = activation_maxima(path, feeds_list, threads)
    threshold = FP16_MAX / headroom
    graph = onnx.load(str(path), load_external_data=False).graph
    over = {n for n, v in maxima.items() if math.isnan(v) or v > threshold}
    pinned = [name for name, node in zip(_node_names(graph), graph.node)
              if over.intersection(node.input) or over.intersection(node.output)]
    finite = {n: v for n, v in maxima.items() if math.isfinite(v)}  # inf: a mask constant; NaN: pinned above
    hottest = max(finite, key=finite.get) if finite else None
    return pinned, {"threshold": threshold, "max_abs": float(finite.get(hottest, 0.0)), "hottest": hottest}


_WEIGHTED = ("MatMul", "Gemm", "Conv")


def timestep_path_nodes(graph, inputs=("timestep",)) -> list[str]:
    """Nodes from the timestep input to the first weighted layer (diffusers' ``time_proj``: t x freqs,
    sin, cos). In fp16, t (up to 999, fractional in flow matching) keeps ~3 significant digits and
    sin(t x f) loses its phase; diffusers computes this part in fp32 in its fp16 pipelines too."""
    consumers: dict[str, list] = {}
    for name, node in zip(_node_names(graph), graph.node):
        for tensor in node.input:
            consumers.setdefault(tensor, []).append((name, node))
    frontier, keep = list(inputs), []
    while frontier:
        for name, node in consumers.get(frontier.pop(), []):
            if name in keep or node.op_type in _WEIGHTED or "time_embedding" in name.split("/"):
                continue
            keep.append(name)
            frontier.extend(node.output)
    return keep


def _fit(graph: dict, axis: str, size: int) -> int:
    r = graph.get("dynamic", {}).get(axis)
    if not r:
        return size
    m = r.get("multiple_of", 1)
    return int(min(max(-(-size // m) * m, r["min"]), r["max"]))


def vae_calibration(encoder: Path, height: int, width: int, seeds, rng) -> dict:
    """Calibration feeds of the VAE graphs: ``vae_encoder`` gets one synthetic photo per seed
    (``height`` x ``width``) and a grey (depth-map-like) version of the first, in [-1, 1];
    ``vae_decoder`` their latents (the fp32 graph ``encoder`` run on them) and as many unit Gaussian
    latents drawn from ``rng`` (what scaled latents are trained to be)."""
    import numpy as np

    from depthrt.backends.ort import OrtRunner
    from depthrt.samples import synthetic_image

    photos = [synthetic_image(height, width, seed=s).astype(np.float32) for s in seeds]
    grey = np.repeat(photos[0].mean(axis=2, keepdims=True), 3, axis=2)
    images = np.stack([p.transpose(2, 0, 1) for p in (*photos, grey)]) / np.float32(127.5) - np.float32(1)
    images = np.ascontiguousarray(images, dtype=np.float32)
    latents = OrtRunner(encoder).run({"image": images})["latent"]
    gauss = rng.standard_normal(latents.shape, dtype=np.float32)
    return {"vae_encoder": [{"image": images}], "vae_decoder": [{"latent": latents}, {"latent": gauss}]}


def diffusion_calibration(bundle: Path, graphs: dict, loop: dict, edge: int = CALIBRATION_EDGE) -> dict:
    """Realistic fp32 inputs of a latent-diffusion bundle's graphs, from its manifest alone.

    ``vae_encoder``: two synthetic photos and a grey (depth-map-like) version, in [-1, 1];
    ``vae_decoder``: their latents (the fp32 encoder's output) and unit Gaussian latents (what scaled
    latents are trained to be); ``unet``: at timesteps 999, 500, 250, samples made of the image latents
    (conditioning channels first) and unit noise, the stored text embedding, Lotus' task switcher.
    """
    import numpy as np

    enc = graphs["vae_encoder"]
    rng = np.random.default_rng(0)
    feeds = vae_calibration(bundle / enc["file"], _fit(enc, "height", 3 * edge // 4), _fit(enc, "width", edge),
                            (0, 1), rng)
    latents = feeds["vae_decoder"][0]["latent"]
    unet = graphs["unet"]
    inputs = {t["name"]: t for t in unet["inputs"]}
    cin, c = int(inputs["sample"]["shape"][1]), latents.shape[1]
    n = len(latents)
    runs = []
    for t in CALIBRATION_TIMESTEPS:
        noise = rng.standard_normal((n, cin, *latents.shape[2:]), dtype=np.float32)
        if cin >= c:  # conditioning latent first (Marigold, Lotus G: cat(image, noise); Lotus D, LBM: image)
            noise[:, :c] = latents if cin > c else latents + np.float32(0.005) * noise[:, :c]
        run = {"sample": noise, "timestep": np.full((n,), t, np.float32)}
        if "encoder_hidden_states" in inputs:
            text = loop.get("text_embedding")
            emb = np.load(bundle / text["file"]) if text else np.zeros(
                [1, *inputs["encoder_hidden_states"]["shape"][1:]], np.float32)
            run["encoder_hidden_states"] = np.repeat(emb.astype(np.float32), n, axis=0)
        if "class_labels" in inputs:
            run["class_labels"] = np.repeat(np.asarray([loop["task_embedding"]], np.float32), n, axis=0)
        unknown = set(inputs) - set(run)
        if unknown:
            raise BundleError(f"no calibration input for the unet input(s) {', '.join(sorted(unknown))}")
        runs.append(run)
    feeds["unet"] = runs
    return feeds


def diffusion_variants(bundle: str | Path, graphs: list[dict], loop: dict, headroom: float = HEADROOM) -> list[dict]:
    """The fp16 variants (calibrated fp32 islands, weights in external data) of a latent-diffusion
    bundle's fp32 graphs, written into ``bundle``; ``graphs`` and ``loop`` as in its manifest."""
    bundle = Path(bundle)
    fp32 = {g["name"]: g for g in graphs if g.get("precision", "fp32") == "fp32"}
    missing = {"vae_encoder", "unet", "vae_decoder"} - set(fp32)
    if missing:
        raise BundleError(f"bundle '{bundle}' lacks the fp32 graph(s) {', '.join(sorted(missing))}")
    feeds = diffusion_calibration(bundle, fp32, loop)
    what = (f"synthetic images at long edge {CALIBRATION_EDGE}, their latents, unit Gaussian latents, UNet at "
            f"timesteps {', '.join(f'{t:g}' for t in CALIBRATION_TIMESTEPS)}")
    out = []
    for name, graph in fp32.items():
        import onnx

        proto = onnx.load(str(bundle / graph["file"]), load_external_data=False)
        half_stored = stores_fp16_weights(proto.graph)
        timestep = timestep_path_nodes(proto.graph) if name == "unet" else []
        del proto
        if half_stored:
            # SDXL-sized UNet (weights stored fp16 + Cast, 2.4e9 parameters): ONNX Runtime's CPU run of its
            # calibration probe peaks at ~19-23 GB (measured; OOM-killed inside the export on a 24 GiB
            # machine), where the rest of the export peaks at 14 GB. Its weights are fp16 already and SDXL's UNet runs in fp16 in
            # diffusers' own pipelines (only the VAE overflows), so it keeps the fixed islands alone.
            pinned = timestep
            calibration = {"rule": UNCALIBRATED_RULE, "pinned": pinned}
        else:
            pinned, figures = calibrated_nodes(bundle / graph["file"], feeds[name], headroom)
            pinned += [n for n in timestep if n not in pinned]
            calibration = {"rule": CALIBRATION_RULE.format(h=headroom, t=figures["threshold"], what=what),
                           "threshold": figures["threshold"], "max_abs": figures["max_abs"], "pinned": pinned}
        release_memory()
        out.append(make_variant(bundle, graph, scopes=(), keep_nodes=pinned, external=True, calibration=calibration))
        release_memory()
    return out


def add_fp16_variants(bundle: str | Path) -> dict:
    """Add (or replace) the fp16 variant of every fp32 graph of ``bundle``; return the new manifest.

    Latent-diffusion bundles (a manifest ``loop``) get calibrated islands (:func:`diffusion_variants`).
    """
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    fp32 = [g for g in manifest["graphs"] if g.get("precision", "fp32") == "fp32"]
    if not fp32:
        raise BundleError(f"bundle '{bundle}' has no fp32 graph to convert")
    graphs = [g for g in manifest["graphs"] if g.get("precision", "fp32") != "fp16"]
    if isinstance(manifest.get("loop"), dict):
        graphs += diffusion_variants(bundle, fp32, manifest["loop"])
    else:
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
            calibrated = ""
            if isl.get("max_abs") is not None:
                calibrated = f"; {len(isl['pinned'])} pinned by the calibrated rule, fp32 max |x| {isl['max_abs']:.3g}"
            elif "pinned" in isl:
                calibrated = f"; not calibrated (fp16-stored weights), {len(isl['pinned'])} timestep nodes pinned"
            print(f"{g['file']}: fp16, {isl['nodes']} nodes kept fp32 ({', '.join(isl['op_types'] + isl['scopes'])})"
                  f"{calibrated}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
