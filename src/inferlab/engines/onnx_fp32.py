"""ONNX Runtime fp32 with the KV cache (graph exported once by optimum-onnx, then cached)."""

from __future__ import annotations

from .onnx_common import LOGITS_TO_KEEP, OrtCausalLM, OrtEngine, export_fp32, onnx_file_bytes


class OnnxFp32(OrtEngine):
    name = "onnx"
    summary = "ONNX Runtime fp32 with the KV cache (optimum-onnx export, cached)"
    driver = OrtCausalLM

    def artifact(self) -> tuple[str, bool]:
        return export_fp32(self.model_ref)

    def details(self, ops: dict) -> dict:
        import onnxruntime

        return {"dtype": "float32", "weight_bits": 32, "activation_bits": 32,
                "providers": self.ort.providers(), "threads": self.threads, "kv_bytes_per_value": 4,
                "onnxruntime": onnxruntime.__version__, "artifact": self.folder,
                "matmul_nodes": ops.get("MatMul", 0) + ops.get("Gemm", 0),
                "lm_head_last_position_only": LOGITS_TO_KEEP in self.ort.input_names}

    def info(self) -> dict:
        stats = self.graph_stats
        weight_bytes = stats["initializer_bytes"]
        details = self.details(stats["ops"])
        details["bytes_read_per_step"] = weight_bytes - stats["lookup_only_bytes"]
        return {"weight_bytes": weight_bytes, "file_bytes": onnx_file_bytes(self.folder),
                "details": details}
