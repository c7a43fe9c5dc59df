"""ONNX Runtime pieces: a cached export (optimum-onnx, with KV cache) and a session that
runs prefill/decode by feeding `present.*` outputs back as `past_key_values.*` inputs."""

from __future__ import annotations

import os

import numpy as np

from .. import defaults
from ..fsutil import build_folder, is_complete
from ..models import ModelRef
from .base import EngineError


def artifact_dir(ref: ModelRef, variant: str) -> str:
    """Cache folder keyed by model content, variant and the exporting libraries' versions."""
    import onnxruntime
    import optimum.version
    import transformers

    tag = f"{variant}-ort{onnxruntime.__version__}-opt{optimum.version.__version__}-tf{transformers.__version__}"
    return os.path.join(defaults.cache_dir(), "onnx", f"{ref.name}-{ref.content_hash}", tag)


def export_fp32(ref: ModelRef) -> tuple[str, bool]:
    """Export with optimum-onnx (text-generation-with-past). Returns (folder, cache_hit)."""
    dest = artifact_dir(ref, "fp32")
    if is_complete(dest):
        return dest, True

    def build(tmp):
        from optimum.exporters.onnx import main_export

        main_export(ref.path, output=tmp, task="text-generation-with-past",
                    do_validation=False, local_files_only=True)
        if not os.path.isfile(os.path.join(tmp, "model.onnx")):
            raise EngineError(f"ONNX export wrote no model.onnx in {tmp}")

    build_folder(dest, build)
    return dest, False


def onnx_file_bytes(folder: str) -> int:
    return sum(
        os.path.getsize(os.path.join(folder, f))
        for f in os.listdir(folder)
        if f.endswith((".onnx", ".onnx_data", ".onnx.data"))
    )


def initializer_bytes(model_path: str) -> tuple[int, dict]:
    """Bytes of the graph's initializers (the weights as ORT holds them) and op counts."""
    total, ops, _ = graph_bytes(model_path)
    return total, ops


def graph_bytes(model_path: str) -> tuple[int, dict, int]:
    """(initializer bytes, op counts, bytes of tables only read through Gather: an embedding
    whose one row per step is all a decode step reads of it)."""
    import onnx
    from onnx import external_data_helper, helper

    model = onnx.load(model_path, load_external_data=False)
    sizes, dims = {}, {}
    for init in model.graph.initializer:
        dims[init.name] = len(init.dims)
        if external_data_helper.uses_external_data(init):
            info = {e.key: e.value for e in init.external_data}
            sizes[init.name] = int(info.get("length", 0))
        else:
            n = int(np.prod(init.dims)) if init.dims else 1
            sizes[init.name] = n * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    ops: dict[str, int] = {}
    users: dict[str, set] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
        for pos, i in enumerate(node.input):
            users.setdefault(i, set()).add((node.op_type, pos))
    # a 2-D table that is only ever the data input of Gather: an embedding lookup
    gathered = sum(sizes[n] for n, u in users.items()
                   if n in sizes and dims[n] == 2 and u == {("Gather", 0)})
    return sum(sizes.values()), ops, gathered


class OrtCausalLM:
    """Greedy-decoding driver over one exported decoder-with-past graph."""

    def __init__(self, model_path: str, threads: int, profile_prefix: str | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.past_inputs = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values")]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if "logits" not in self.output_names:
            raise EngineError(f"{model_path}: graph has no 'logits' output")
        self.past: dict[str, np.ndarray] = {}
        self.length = 0

    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _empty_past(self) -> dict[str, np.ndarray]:
        past = {}
        for inp in self.past_inputs:
            # shape like [batch, heads, past_len, head_dim]: symbolic dims -> 1 (batch) / 0 (len)
            shape = [d if isinstance(d, int) else 0 for d in inp.shape]
            shape[0] = 1
            past[inp.name] = np.zeros(shape, dtype=np.float32)
        return past

    def _run(self, ids: list[int], past: dict) -> np.ndarray:
        n = len(ids)
        feeds = {"input_ids": np.asarray([ids], dtype=np.int64)}
        if "attention_mask" in self.input_names:
            feeds["attention_mask"] = np.ones((1, self.length + n), dtype=np.int64)
        if "position_ids" in self.input_names:
            feeds["position_ids"] = np.arange(self.length, self.length + n, dtype=np.int64)[None]
        feeds.update(past)
        outputs = self.session.run(None, feeds)
        named = dict(zip(self.output_names, outputs))
        self.past = {
            name.replace("present", "past_key_values", 1): value
            for name, value in named.items()
            if name.startswith("present")
        }
        self.length += n
        return named["logits"][0]

    def prefill(self, ids: list[int], all_logits: bool = False) -> np.ndarray:
        self.length = 0
        logits = self._run(list(ids), self._empty_past())
        return logits if all_logits else logits[-1]

    def decode(self, token_id: int) -> np.ndarray:
        return self._run([int(token_id)], self.past)[-1]
