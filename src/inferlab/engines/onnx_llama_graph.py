"""Build a fused ONNX Runtime graph for a Llama-architecture decoder straight from its weights.

What the exported graph of `onnx` / `onnx-int8` lacks, and this one has:
- attention in one GroupQueryAttention node (rotary inside, Q/K/V packed in one MatMul);
- RMSNorm and the residual add fused (SkipSimplifiedLayerNormalization);
- one KV buffer per layer of a fixed number of slots, that the driver binds as both the `past`
  input and the `present` output: each step writes its keys in place, no cache copy;
- block-quantized weights (MatMulNBits), the LM head on the last positions asked for.

Weights that lie on a Q4_1 grid (w = q * scale + min) are kept exact: MatMulNBits takes integer
zero points only, so the layer runs MatMulNBits(x, q, scale, zero point 0) and adds the
offsets' part, sum over blocks of (x summed over the block) * min, as one small MatMul."""

from __future__ import annotations

import math

import numpy as np

from . import llama_arch
from .blockquant import Quantized, affine4, symmetric8
from .llama_arch import Shapes, rotary_tables

BLOCK = 32
ACCURACY_LEVEL = 4  # int8 activations inside MatMulNBits (what onnx-int8 already passes with)
OPSET = 17


def check_supported(config: dict) -> None:
    """Raise EngineUnsupported unless this builder reproduces the config's decoder."""
    llama_arch.check_supported(config, "inferlab's fused ONNX graph", BLOCK)


class _Graph:
    """Nodes and initializers under construction, with unique names."""

    def __init__(self):
        self.nodes, self.inits, self.block_sums = [], [], {}

    def init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> list[str]:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, outputs, f"{outputs[0]}_{op}", domain=domain, **attrs))
        return outputs

    def matmul(self, x: str, name: str, q: Quantized) -> str:
        """x [.., K] @ W^T with W block-quantized; the affine offsets' part added exactly."""
        n, nb, _ = q.packed.shape
        inputs = [x, self.init(f"{name}.qweight", q.packed), self.init(f"{name}.scales", q.scales.reshape(-1))]
        out = self.node("MatMulNBits", inputs, [f"{name}.out_q"], "com.microsoft", K=nb * q.block, N=n,
                        bits=q.bits, block_size=q.block, accuracy_level=ACCURACY_LEVEL)[0]
        if q.offsets is None:
            return out
        # MatMulNBits applies its default zero point, 8 for 4 bits: w = (q - 8) * scale +
        # (offset + 8 * scale). Without a zero-point input its kernel is ~10 % faster.
        zero = 2 ** (q.bits - 1)
        offsets = self.init(f"{name}.offsets_t", (q.offsets + zero * q.scales).T)  # [nb, N]
        part = self.node("MatMul", [self._block_sums(x, name, nb, q.block), offsets], [f"{name}.offset_part"])[0]
        return self.node("Add", [out, part], [f"{name}.out"])[0]

    def _block_sums(self, x: str, user: str, nb: int, block: int) -> str:
        """x [1, S, nb * block] summed per block -> [1, S, nb], once per input tensor (named
        after its first user, so that the profiler files it under that layer's part)."""
        if x not in self.block_sums:
            shape = self.init(f"{user}.block_shape", np.array([0, 0, nb, block], np.int64))
            blocks = self.node("Reshape", [x, shape], [f"{user}.input_blocks"])[0]
            axes = self.init(f"{user}.block_axes", np.array([-1], np.int64))
            self.block_sums[x] = self.node("ReduceSum", [blocks, axes], [f"{user}.block_sums"], keepdims=0)[0]
        return self.block_sums[x]


def quantize(w: np.ndarray, layer_bits: int) -> Quantized:
    return affine4(w, BLOCK) if layer_bits == 4 else symmetric8(w, BLOCK)


def build(weights: dict[str, np.ndarray], config: dict, layer_bits: int, slots: int, head_bits: int = 8):
    """The ONNX model and a report {matrices, exact matrices, max relative error}."""
    from onnx import TensorProto, helper

    check_supported(config)
    s = Shapes(config)
    g = _Graph()
    report = {"matrices": 0, "exact": 0, "max_relative_error": 0.0}

    def quantized(ws: list[str], bits: int) -> Quantized:
        q = quantize(np.concatenate([weights[w] for w in ws], axis=0), bits)
        report["matrices"] += len(ws)
        report["exact"] += len(ws) if q.exact else 0
        report["max_relative_error"] = max(report["max_relative_error"], q.max_error / max(q.max_abs, 1e-30))
        return q

    kv_shape = [1, s.kv_heads, slots, s.head_dim]  # the rotary tables cover exactly these slots
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "sequence"]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
              helper.make_tensor_value_info("logits_to_keep", TensorProto.INT64, [1])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "kept", s.vocab])]

    embed = weights["model.embed_tokens.weight"]
    hidden = g.node("Gather", [g.init("model.embed_tokens.weight", embed), "input_ids"], ["model.embed_tokens.out"])[0]
    cos, sin = rotary_tables(s, slots)
    cos, sin = g.init("rotary.cos", cos), g.init("rotary.sin", sin)
    residual, down = hidden, None
    for i in range(s.layers):
        p = f"model.layers.{i}."
        gamma = g.init(p + "input_layernorm.weight", weights[p + "input_layernorm.weight"])
        if down is None:
            x = g.node("SimplifiedLayerNormalization", [residual, gamma], [p + "input_layernorm.out"],
                       epsilon=s.eps, axis=-1, stash_type=1)[0]
        else:
            x, _, _, residual = g.node("SkipSimplifiedLayerNormalization", [down, residual, gamma],
                                       [p + "input_layernorm.out", "", "", p + "input_layernorm.residual"], "com.microsoft",
                                       epsilon=s.eps)
        attn = p + "self_attn."
        qkv = g.matmul(x, attn + "qkv_proj", quantized([attn + f"{k}_proj.weight" for k in "qkv"], layer_bits))
        past = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        present = [f"present.{i}.key", f"present.{i}.value"]
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, kv_shape) for n in past]
        outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, kv_shape) for n in present]
        context = g.node("GroupQueryAttention", [qkv, "", "", *past, "seqlens_k", "total_sequence_length", cos, sin],
                         [attn + "context", *present], "com.microsoft", num_heads=s.heads,
                         kv_num_heads=s.kv_heads, do_rotary=1, rotary_interleaved=0,
                         scale=1.0 / math.sqrt(s.head_dim))[0]
        o = g.matmul(context, attn + "o_proj", quantized([attn + "o_proj.weight"], layer_bits))
        gamma = g.init(p + "post_attention_layernorm.weight", weights[p + "post_attention_layernorm.weight"])
        x, _, _, residual = g.node("SkipSimplifiedLayerNormalization", [o, residual, gamma],
                                   [p + "post_attention_layernorm.out", "", "", p + "post_attention_layernorm.residual"],
                                   "com.microsoft", epsilon=s.eps)
        mlp = p + "mlp."
        gate_up = g.matmul(x, mlp + "gate_up_proj",
                           quantized([mlp + "gate_proj.weight", mlp + "up_proj.weight"], layer_bits))
        split = g.init(mlp + "split", np.array([s.inter, s.inter], np.int64))
        gate, up = g.node("Split", [gate_up, split], [mlp + "gate", mlp + "up"], axis=-1)
        silu = g.node("Mul", [gate, g.node("Sigmoid", [gate], [mlp + "gate_sigmoid"])[0]], [mlp + "silu"])[0]
        act = g.node("Mul", [silu, up], [mlp + "act"])[0]
        down = g.matmul(act, mlp + "down_proj", quantized([mlp + "down_proj.weight"], layer_bits))

    gamma = g.init("model.norm.weight", weights["model.norm.weight"])
    final = g.node("SkipSimplifiedLayerNormalization", [down, residual, gamma], ["model.norm.out"],
                   "com.microsoft", epsilon=s.eps)[0]
    # the LM head on the last `logits_to_keep` positions (0 = all), like PyTorch's logits_to_keep
    start = g.node("Neg", ["logits_to_keep"], ["lm_head.start"])[0]
    end = g.init("lm_head.end", np.array([2**63 - 1], np.int64))
    axis = g.init("lm_head.axis", np.array([1], np.int64))
    kept = g.node("Slice", [final, start, end, axis], ["lm_head.kept_positions"])[0]
    head_name = llama_arch.lm_head_name(s, weights)
    # 8 bits by default, as llama.cpp's 4-bit files keep it (Q8_0 in the bundled GGUF); a 4-bit
    # head by the same affine rule fails SmolLM2's quality gate (KL 0.057, top-1 85.8 %)
    head = g.matmul(kept, "lm_head", quantized([head_name], head_bits))
    g.nodes.append(helper.make_node("Identity", [head], ["logits"], "lm_head.logits_Identity"))

    graph = helper.make_graph(g.nodes, "inferlab_fused_decoder", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model, report
