"""ONNX Runtime with int8 weights on MatMul/Gemm only (per-channel, dynamic activations).

Not the embedding: quantizing the tied embedding makes every step dequantize the whole
vocabulary matrix, which is slower than fp32 (FACTS.md)."""

from __future__ import annotations

import os

from .base import EngineError
from .onnx_common import artifact_dir, build_atomically, export_fp32, initializer_bytes, is_complete
from .onnx_fp32 import OnnxFp32

QUANTIZED_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


class OnnxInt8(OnnxFp32):
    name = "onnx-int8"
    summary = "ONNX Runtime int8 weights on MatMul/Gemm (per-channel), KV cache"

    def artifact(self) -> tuple[str, bool]:
        dest = artifact_dir(self.model_ref, "int8-matmul-perchannel")
        if is_complete(dest):
            return dest, True
        src, _ = export_fp32(self.model_ref)

        def build(tmp):
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(
                os.path.join(src, "model.onnx"),
                os.path.join(tmp, "model.onnx"),
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=True,
                weight_type=QuantType.QInt8,
                use_external_data_format=False,
            )

        build_atomically(dest, build)
        return dest, False

    def load(self) -> None:
        super().load()
        _, ops = initializer_bytes(self.model_path)
        if sum(ops.get(op, 0) for op in QUANTIZED_OPS) == 0:
            raise EngineError("onnx-int8 quantized 0 MatMul/Gemm nodes: nothing was optimized")

    def details(self, ops: dict) -> dict:
        _, fp32_ops = initializer_bytes(os.path.join(export_fp32(self.model_ref)[0], "model.onnx"))
        return {
            **super().details(ops),
            "dtype": "int8 weights (per-channel) on MatMul/Gemm / fp32 activations",
            "quantized_nodes": sum(ops.get(op, 0) for op in QUANTIZED_OPS),
            "matmul_nodes_before": fp32_ops.get("MatMul", 0) + fp32_ops.get("Gemm", 0),
            "fp32_matmul_nodes_left": ops.get("MatMul", 0) + ops.get("Gemm", 0),
        }
