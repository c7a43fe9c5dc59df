"""ONNX Runtime on inferlab's fused graph (onnx_llama_graph.py) with 4-bit weights.

The KV cache is one preallocated buffer per layer and tensor, bound with ONNX Runtime's
IOBinding as both GroupQueryAttention's `past` input and its `present` output: a step writes
its new keys and values in place and nothing of the cache is copied or returned to Python."""

from __future__ import annotations

import os

import numpy as np

from .. import defaults
from ..fsutil import build_folder
from . import llama_arch
from . import onnx_llama_graph as graph
from .base import EngineError, EngineUnsupported, Usage
from .onnx_common import OrtEngine, artifact_dir, cpu_session, onnx_file_bytes, write_graph_stats

RECIPE = "r1"  # bump when the builder's output changes: it is part of the cache key


class FusedOrtDecoder:
    """Prefill and decode over a fused graph, the KV buffers shared between steps in place."""

    def __init__(self, model_path: str, threads: int, profile_prefix: str | None = None):
        import onnxruntime as ort

        self.session = cpu_session(model_path, threads, profile_prefix)
        self.binding = self.session.io_binding()
        self.binding.bind_output("logits", "cpu")  # first: get_outputs()[0] is the logits
        self.buffers = []  # the numpy arrays behind the bound cache: kept alive with the session
        for inp in self.session.get_inputs():
            if not inp.name.startswith("past_key_values."):
                continue
            # [1, kv heads, slots, head dim], all fixed when the graph was built; zeros come from
            # calloc, so slots never written never become resident memory
            buf = np.zeros(inp.shape, np.float32)
            value = ort.OrtValue.ortvalue_from_numpy(buf)
            self.binding.bind_ortvalue_input(inp.name, value)
            self.binding.bind_ortvalue_output(inp.name.replace("past_key_values.", "present.", 1), value)
            self.buffers.append((buf, value))
        if not self.buffers:
            raise EngineError(f"{model_path}: graph has no past_key_values inputs")
        self.slots = self.buffers[0][0].shape[2]
        self.length = 0

    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _run(self, ids: list[int], keep_all: bool) -> np.ndarray:
        total = self.length + len(ids)
        if total > self.slots:
            raise EngineError(f"sequence of {total} tokens is longer than the {self.slots} KV slots")
        b = self.binding
        b.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        b.bind_cpu_input("seqlens_k", np.asarray([total - 1], dtype=np.int32))
        b.bind_cpu_input("total_sequence_length", np.asarray(total, dtype=np.int32))
        b.bind_cpu_input("logits_to_keep", np.asarray([0 if keep_all else 1], dtype=np.int64))
        b.bind_output("logits", "cpu")  # bound anew each run: its shape follows logits_to_keep
        self.session.run_with_iobinding(b)
        self.length = total
        return b.get_outputs()[0].numpy()[0]

    def prefill(self, ids: list[int], all_logits: bool = False) -> np.ndarray:
        self.length = 0  # the buffers are overwritten from slot 0; older slots are never read
        logits = self._run(list(ids), all_logits)
        return logits if all_logits else logits[-1]

    def decode(self, token_id: int) -> np.ndarray:
        return self.append([token_id])

    def rewind(self, length: int) -> bool:
        self.length = length  # later slots are overwritten before they are read
        return True

    def append(self, ids: list[int]) -> np.ndarray:
        return self._run([int(t) for t in ids], False)[-1]


class OnnxInt4(OrtEngine):
    name = "onnx-int4"
    summary = ("ONNX Runtime, inferlab's fused graph (GroupQueryAttention, KV cache in place): "
               "4-bit weights by the Q4_1 rule (exact when the model came from Q4_1), 8-bit LM "
               "head, int8 compute; Llama-architecture models")
    layer_bits = 4
    driver = FusedOrtDecoder
    max_batch = 1  # the graph's KV buffers are built for one sequence
    setup_in_ttft = "none: fixed KV buffers bound once, overwritten from slot 0"

    @classmethod
    def applies_to(cls, model) -> bool:
        return cls.unavailable(model) is None

    @classmethod
    def unavailable(cls, model) -> str | None:
        try:
            graph.check_supported(llama_arch.read_config(model.path))
        except (EngineUnsupported, OSError, ValueError, KeyError) as e:
            return str(e)
        return None

    def usage(self, prompt: str, new_tokens: int) -> Usage:
        folder, _ = self.artifact()
        tokenizer = os.path.join(self.model_ref.path, "tokenizer.json")
        code = f"""import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

options = ort.SessionOptions()
options.intra_op_num_threads = {self.threads}
session = ort.InferenceSession({os.path.join(folder, "model.onnx")!r}, options, providers=["CPUExecutionProvider"])
tokenizer = Tokenizer.from_file({tokenizer!r})
# the KV cache: one fixed buffer per layer and tensor ({defaults.KV_SLOTS} slots), passed in, returned filled
past = {{i.name: np.zeros(i.shape, np.float32) for i in session.get_inputs() if i.name.startswith("past_key_values.")}}
names = [o.name for o in session.get_outputs()]


def step(ids, length):
    total = length + len(ids)
    out = dict(zip(names, session.run(None, {{
        "input_ids": np.asarray([ids], np.int64), "seqlens_k": np.asarray([total - 1], np.int32),
        "total_sequence_length": np.asarray(total, np.int32), "logits_to_keep": np.asarray([1], np.int64),
        **past}})))
    for name in past:
        past[name] = out[name.replace("past_key_values.", "present.", 1)]
    return out["logits"][0, -1], total


logits, length = step(tokenizer.encode({prompt!r}).ids, 0)
tokens = [int(np.argmax(logits))]
for _ in range({new_tokens} - 1):
    logits, length = step([tokens[-1]], length)
    tokens.append(int(np.argmax(logits)))
print(tokenizer.decode(tokens))
"""
        return Usage(folder, "onnxruntime, tokenizers, numpy", code, also=[tokenizer],
                     note="inferlab's own graph (GroupQueryAttention with the KV cache in fixed buffers, "
                          "4-bit MatMulNBits weights): a standard ONNX file that ONNX Runtime runs as it "
                          "is; inferlab binds the cache in place instead of passing it back and forth")

    def artifact(self) -> tuple[str, bool]:
        dest = artifact_dir(self.model_ref, f"fused-int{self.layer_bits}-b{graph.BLOCK}"
                                            f"-acc{graph.ACCURACY_LEVEL}-kv{defaults.KV_SLOTS}-{RECIPE}")

        def build(tmp):
            import onnx

            config = llama_arch.read_config(self.model_ref.path)
            graph.check_supported(config)  # before reading any weight
            model, report = graph.build(llama_arch.load_weights(self.model_ref.path), config,
                                        self.layer_bits, defaults.KV_SLOTS)
            onnx.save_model(model, os.path.join(tmp, "model.onnx"))
            write_graph_stats(tmp, report)

        return dest, build_folder(dest, build)

    def info(self) -> dict:
        import onnxruntime

        stats = self.graph_stats
        build = stats.get("build", {})
        exact = build.get("exact", 0) == build.get("matrices", -1)
        return {
            "weight_bytes": stats["initializer_bytes"],
            "file_bytes": onnx_file_bytes(self.folder),
            "details": {
                "dtype": (f"int{self.layer_bits} weights by the Q4_1 rule (block {graph.BLOCK}, "
                          f"float scale and offset), 8-bit LM head, int8 compute "
                          f"(accuracy_level {graph.ACCURACY_LEVEL})"),
                "graph": "inferlab fused builder (GroupQueryAttention, SkipSimplifiedLayerNormalization)",
                "weights_exact": exact,
                "weight_matrices": build.get("matrices"),
                "max_weight_error_relative": build.get("max_relative_error"),
                "providers": self.ort.providers(), "threads": self.threads,
                "onnxruntime": onnxruntime.__version__, "artifact": self.folder,
                "kv_cache": f"in place, {self.ort.slots} slots per layer",
                "kv_bytes_per_value": 4, "weight_bits": self.layer_bits, "activation_bits": 8,
                "quantized_nodes": stats["ops"].get("MatMulNBits", 0),
                "lm_head_last_position_only": True,
                "bytes_read_per_step": stats["initializer_bytes"] - stats["lookup_only_bytes"],
            },
        }
