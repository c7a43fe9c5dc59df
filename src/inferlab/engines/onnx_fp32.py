"""ONNX Runtime fp32 with the KV cache (graph exported once by optimum-onnx, then cached)."""

from __future__ import annotations

import os
from functools import cached_property

from .base import Engine
from .onnx_common import LOGITS_TO_KEEP, OrtCausalLM, export_fp32, onnx_file_bytes, read_graph_stats


class OnnxFp32(Engine):
    name = "onnx"
    summary = "ONNX Runtime fp32 with the KV cache (optimum-onnx export, cached)"

    def artifact(self) -> tuple[str, bool]:
        return export_fp32(self.model_ref)

    def prepare(self) -> bool:
        return self.artifact()[1]

    def load(self) -> None:
        folder, _ = self.artifact()
        self.folder = folder
        self.model_path = os.path.join(folder, "model.onnx")
        self.ort = self.ort_driver()

    def ort_driver(self, profile_prefix: str | None = None) -> OrtCausalLM:
        """A session over this method's graph (the profiler asks for a second, profiled one)."""
        return OrtCausalLM(self.model_path, self.threads, profile_prefix)

    def prefill(self, token_ids, all_logits=False):
        return self.ort.prefill(token_ids, all_logits)

    def decode(self, token_id):
        return self.ort.decode(token_id)

    @cached_property
    def graph_stats(self) -> dict:
        """Initializer bytes, op counts and lookup-only bytes of the graph, kept when it was
        built: parsing a graph of hundreds of MB here would count in the method's memory."""
        return read_graph_stats(self.folder)

    def details(self, ops: dict) -> dict:
        import onnxruntime

        return {"dtype": "float32", "providers": self.ort.providers(), "threads": self.threads,
                "kv_cache_bytes_per_value": 4,
                "onnxruntime": onnxruntime.__version__, "artifact": self.folder,
                "matmul_nodes": ops.get("MatMul", 0) + ops.get("Gemm", 0),
                "lm_head_last_position_only": LOGITS_TO_KEEP in self.ort.input_names}

    def info(self) -> dict:
        stats = self.graph_stats
        weight_bytes = stats["initializer_bytes"]
        details = self.details(stats["ops"])
        details["weight_bytes_read_per_step"] = weight_bytes - stats["lookup_only_bytes"]
        return {"weight_bytes": weight_bytes, "file_bytes": onnx_file_bytes(self.folder),
                "details": details}
