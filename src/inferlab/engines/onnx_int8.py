"""ONNX Runtime with int8 weights: MatMulNBits (8 bits, blocks of 32, symmetric) with int8
compute (accuracy_level 4), KV cache.

Why not `quantize_dynamic`: in onnxruntime 1.32 its per-channel int8 MatMulInteger graph gives
garbage on SmolLM2 (KL 12.6 nats against fp32, top-1 agreement 0 %), and per-tensor gives KL 0.7
with the greedy text diverging; 8-bit block-wise weights keep KL at 0.005 and are faster.
The LM head, tied to the embedding behind a Transpose, gets its own transposed copy first, so
that it is quantized too (it is a fifth of the weights read per step)."""

from __future__ import annotations

import os

from .base import EngineError
from ..fsutil import build_folder
from .onnx_common import artifact_dir, export_fp32, read_graph_stats, write_graph_stats
from .onnx_fp32 import OnnxFp32

QUANTIZED_OPS = ("MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul")
BITS, BLOCK_SIZE, ACCURACY_LEVEL = 8, 32, 4  # accuracy_level 4: int8 activations in the kernel
RECIPE = "r4"  # bump when the conversion below changes: it is part of the cache key


def quantized_nodes(ops: dict) -> int:
    return sum(ops.get(op, 0) for op in QUANTIZED_OPS)


def require_quantized(ops: dict) -> None:
    """Zero quantized nodes is a failure, not a result."""
    if quantized_nodes(ops) == 0:
        raise EngineError("onnx-int8 quantized 0 MatMul nodes: nothing was optimized")


def gemm_to_matmul(model) -> int:
    """Rewrite Gemm(A, W, C) with a constant W as MatMul + Add, in place, so that the MatMulNBits
    quantizer (MatMul only) sees GPT-2's Conv1D layers, which export as Gemm. Returns the count."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        simple = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or node.input[1] not in inits or not simple:
            new_nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            w = numpy_helper.to_array(inits[weight]).T.copy()
            weight = weight + "_transposed"
            graph.initializer.append(numpy_helper.from_array(w, weight))
        mm_out = node.output[0] + "_matmul" if len(node.input) > 2 else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], weight], [mm_out], node.name + "_matmul"))
        if len(node.input) > 2:
            new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], node.name + "_bias"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    onnx.checker.check_model(model) if model.ByteSize() < 2**31 else None
    return rewritten


def untie_transposed_weights(model) -> int:
    """Give a MatMul that reads Transpose(initializer) (the LM head tied to the embedding) its
    own transposed initializer, so that it can be quantized; the embedding stays fp32 for its
    one-row Gather. Costs vocab x hidden int8 bytes more on disk, saves reading the fp32 table
    every step. Returns how many MatMuls were untied."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    untied, dropped = 0, set()
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] in inits or node.input[1] not in producer:
            continue
        t = producer[node.input[1]]
        perm = [helper.get_attribute_value(a) for a in t.attribute if a.name == "perm"]
        if t.op_type != "Transpose" or t.input[0] not in inits or perm not in ([], [[1, 0]]):
            continue
        name = t.input[0] + "_untied_transposed"
        if name not in inits:
            w = numpy_helper.to_array(inits[t.input[0]]).T.copy()
            graph.initializer.append(numpy_helper.from_array(w, name))
            inits[name] = graph.initializer[-1]
        node.input[1] = name
        untied += 1
        if consumers.get(t.output[0], 0) <= 1:
            dropped.add(t.name)
    kept = [n for n in graph.node if n.name not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    return untied


class OnnxInt8(OnnxFp32):
    name = "onnx-int8"
    summary = ("ONNX Runtime int8 weights (MatMulNBits 8-bit, block 32, LM head included) with "
               "int8 compute, KV cache")

    def artifact(self) -> tuple[str, bool]:
        dest = artifact_dir(self.model_ref,
                            f"int{BITS}-nbits-b{BLOCK_SIZE}-acc{ACCURACY_LEVEL}-{RECIPE}")

        def build(tmp):
            import logging

            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
            import onnx

            src, _ = export_fp32(self.model_ref)
            model = onnx.load(os.path.join(src, "model.onnx"))
            gemm_to_matmul(model)
            untie_transposed_weights(model)
            q = MatMulNBitsQuantizer(model, bits=BITS,
                                     block_size=BLOCK_SIZE, is_symmetric=True,
                                     accuracy_level=ACCURACY_LEVEL)
            q.process()
            out = os.path.join(tmp, "model.onnx")
            q.model.save_model_to_file(out, use_external_data_format=False)
            require_quantized(write_graph_stats(tmp)["ops"])  # never cache a no-op

        return dest, build_folder(dest, build)

    def load(self) -> None:
        super().load()
        require_quantized(self.graph_stats["ops"])

    def details(self, ops: dict) -> dict:
        fp32_ops = read_graph_stats(export_fp32(self.model_ref)[0])["ops"]
        return {
            **super().details(ops),
            "dtype": f"int{BITS} weights (block {BLOCK_SIZE}, symmetric), int8 compute "
                     f"(accuracy_level {ACCURACY_LEVEL})",
            "weight_bits": BITS, "activation_bits": 8,
            "quantized_nodes": quantized_nodes(ops),
            "matmul_nodes_before": fp32_ops.get("MatMul", 0) + fp32_ops.get("Gemm", 0),
            "fp32_matmul_nodes_left": ops.get("MatMul", 0) + ops.get("Gemm", 0),
        }
