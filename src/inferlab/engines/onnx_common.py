"""ONNX Runtime pieces: a cached export (optimum-onnx, with KV cache, the LM head limited to
the positions asked for) and a session that runs prefill/decode by feeding `present.*` outputs
back as `past_key_values.*` inputs.

Loading imports onnxruntime and numpy only: the export's libraries (optimum, transformers,
torch) stay out of the measuring process, whose memory is the method's figure."""

from __future__ import annotations

import json
import os
from abc import abstractmethod
from functools import cached_property
from importlib import metadata
from typing import ClassVar

import numpy as np

from ..fsutil import build_folder
from ..models import ModelRef, artifact_folder
from .base import Engine, EngineError

FP32_RECIPE = "r2"  # bump when the export's post-processing changes: it is part of the cache key
LOGITS_TO_KEEP = "logits_to_keep"  # graph input: 0 = logits of every position, k = the last k
STATS_FILE = "graph_stats.json"  # written when the graph is built, read when it is loaded


def artifact_dir(ref: ModelRef, variant: str) -> str:
    """Cache folder keyed by model content, variant and the exporting libraries' versions
    (read from package metadata: importing them would load torch)."""
    tag = (f"{variant}-ort{metadata.version('onnxruntime')}-opt{metadata.version('optimum')}"
           f"-tf{metadata.version('transformers')}")
    return artifact_folder(ref, "onnx", tag)


def export_fp32(ref: ModelRef) -> tuple[str, bool]:
    """Export with optimum-onnx (text-generation-with-past), then make the LM head run on the
    last position only unless asked for more. Returns (folder, cache_hit)."""
    dest = artifact_dir(ref, f"fp32-{FP32_RECIPE}")

    def build(tmp):
        import onnx
        from optimum.exporters.onnx import main_export

        main_export(ref.path, output=tmp, task="text-generation-with-past",
                    do_validation=False, local_files_only=True)
        path = os.path.join(tmp, "model.onnx")
        if not os.path.isfile(path):
            raise EngineError(f"ONNX export wrote no model.onnx in {tmp}")
        model = onnx.load(path)
        keep_last_logits(model)
        for f in os.listdir(tmp):  # external data files of the export are rewritten inline
            if f.endswith((".onnx_data", ".onnx.data")):
                os.remove(os.path.join(tmp, f))
        onnx.save_model(model, path, save_as_external_data=model.ByteSize() >= 2**31 - 2**20)
        write_graph_stats(tmp)

    return dest, build_folder(dest, build)


def keep_last_logits(model) -> None:
    """Add the input `logits_to_keep` and slice the LM head's input to the last k positions
    (all when k = 0), as PyTorch's `logits_to_keep` does: a prefill then computes one row of
    vocabulary-sized logits instead of one per prompt token, the same work as the PyTorch
    engines; the quality pass asks for all of them."""
    from onnx import TensorProto, helper

    graph = model.graph
    head = next((n for n in graph.node if "logits" in n.output), None)
    if head is None or head.op_type not in ("MatMul", "Gemm"):
        raise EngineError("ONNX export: no MatMul produces 'logits'; cannot limit the LM head")
    graph.input.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, [1]))
    sliced = head.input[0] + "_last_positions"
    new = [
        helper.make_node("Neg", [LOGITS_TO_KEEP], ["logits_slice_start"], "logits_slice_start"),
        helper.make_node("Constant", [], ["logits_slice_end"], "logits_slice_end",
                         value=helper.make_tensor("end", TensorProto.INT64, [1], [2**63 - 1])),
        helper.make_node("Constant", [], ["logits_slice_axis"], "logits_slice_axis",
                         value=helper.make_tensor("axis", TensorProto.INT64, [1], [1])),
        helper.make_node("Slice", [head.input[0], "logits_slice_start", "logits_slice_end",
                                   "logits_slice_axis"], [sliced], "logits_last_positions"),
    ]
    index = list(graph.node).index(head)
    for offset, node in enumerate(new):
        graph.node.insert(index + offset, node)
    head.input[0] = sliced
    for out in graph.output:  # its length is no longer the input's sequence length
        if out.name == "logits" and len(out.type.tensor_type.shape.dim) > 1:
            out.type.tensor_type.shape.dim[1].dim_param = "logits_length"


def write_graph_stats(folder: str, build_report: dict | None = None) -> dict:
    """Parse the built graph once, when it is built, and keep what loading needs to know
    (with what the builder reports of its own work, if anything)."""
    total, ops, gathered = graph_bytes(os.path.join(folder, "model.onnx"))
    stats = {"initializer_bytes": total, "ops": ops, "lookup_only_bytes": gathered,
             "build": build_report or {}}
    with open(os.path.join(folder, STATS_FILE), "w") as f:
        json.dump(stats, f)
    return stats


def read_graph_stats(folder: str) -> dict:
    path = os.path.join(folder, STATS_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        raise EngineError(f"{path} is missing or unreadable: prepare the method again") from None


def onnx_file_bytes(folder: str) -> int:
    return sum(
        os.path.getsize(os.path.join(folder, f))
        for f in os.listdir(folder)
        if f.endswith((".onnx", ".onnx_data", ".onnx.data"))
    )


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
    # a table only ever read through a gather (its rows, scales and zero points): an embedding
    # lookup, of which a decode step reads one row
    lookups = {("Gather", 0), ("GatherBlockQuantized", 0), ("GatherBlockQuantized", 2),
               ("GatherBlockQuantized", 3)}
    gathered = sum(sizes[n] for n, u in users.items()
                   if n in sizes and dims[n] >= 2 and u <= lookups)
    return sum(sizes.values()), ops, gathered


def cpu_session(model_path: str, threads: int, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session as every inferlab ONNX method runs it: `threads` intra-op
    threads, sequential execution, all graph optimizations; ORT's profiler on when asked."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])


class OrtEngine(Engine):
    profiler = "onnxruntime"
    """An ONNX Runtime method: a cached graph (`artifact`) run by a driver class that takes
    (model path, threads, profile prefix) and offers prefill/decode."""

    driver: ClassVar[type]
    max_batch = 256  # the exported graph's batch axis (a driver without one says 1)
    setup_in_ttft = "empty past arrays made for the prompt; ONNX Runtime allocates the present arrays it returns"

    @abstractmethod
    def artifact(self) -> tuple[str, bool]:
        """(folder holding model.onnx, cache hit), building it when missing."""

    def prepare(self) -> bool:
        return self.artifact()[1]

    def load(self) -> None:
        self.folder, _ = self.artifact()
        self.model_path = os.path.join(self.folder, "model.onnx")
        self.ort = self.ort_driver()

    def ort_driver(self, profile_prefix: str | None = None):
        """A session over this method's graph (the profiler asks for a second, profiled one)."""
        return self.driver(self.model_path, self.threads, profile_prefix)

    def prefill(self, token_ids, all_logits=False):
        return self.ort.prefill(token_ids, all_logits)

    def decode(self, token_id):
        return self.ort.decode(token_id)

    def append(self, token_ids):
        return self.ort.append(token_ids)

    def rewind(self, length):
        return self.ort.rewind(length)

    def prefill_batch(self, sequences):
        return self.ort.prefill_batch(sequences)

    def append_batch(self, sequences):
        return self.ort.append_batch(sequences)

    @cached_property
    def graph_stats(self) -> dict:
        """Initializer bytes, op counts and lookup-only bytes of the graph, kept when it was
        built: parsing a graph of hundreds of MB here would count in the method's memory."""
        return read_graph_stats(self.folder)


class OrtCausalLM:
    """Greedy-decoding driver over one exported decoder-with-past graph."""

    def __init__(self, model_path: str, threads: int, profile_prefix: str | None = None):
        self.session = cpu_session(model_path, threads, profile_prefix)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.past_inputs = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values")]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if "logits" not in self.output_names:
            raise EngineError(f"{model_path}: graph has no 'logits' output")
        self.past: dict[str, np.ndarray] = {}
        self.length = 0

    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        past = {}
        for inp in self.past_inputs:
            # shape like [batch, heads, past_len, head_dim]: symbolic dims -> batch / 0 (len)
            shape = [d if isinstance(d, int) else 0 for d in inp.shape]
            shape[0] = batch
            past[inp.name] = np.zeros(shape, dtype=np.float32)
        return past

    def _run(self, rows: list[list[int]], past: dict, keep_all: bool = False) -> np.ndarray:
        """One call for every sequence (rows of equal length); logits [batch, positions, vocab]."""
        batch, n = len(rows), len(rows[0])
        feeds = {"input_ids": np.asarray(rows, dtype=np.int64)}
        if "attention_mask" in self.input_names:
            feeds["attention_mask"] = np.ones((batch, self.length + n), dtype=np.int64)
        if "position_ids" in self.input_names:
            positions = np.arange(self.length, self.length + n, dtype=np.int64)
            feeds["position_ids"] = np.repeat(positions[None], batch, axis=0)
        if LOGITS_TO_KEEP in self.input_names:
            feeds[LOGITS_TO_KEEP] = np.asarray([0 if keep_all else 1], dtype=np.int64)
        feeds.update(past)
        outputs = self.session.run(None, feeds)
        named = dict(zip(self.output_names, outputs))
        self.past = {
            name.replace("present", "past_key_values", 1): value
            for name, value in named.items()
            if name.startswith("present")
        }
        self.length += n
        return named["logits"]

    def prefill(self, ids: list[int], all_logits: bool = False) -> np.ndarray:
        self.length = 0
        logits = self._run([list(ids)], self._empty_past(1), keep_all=all_logits)[0]
        return logits if all_logits else logits[-1]

    def decode(self, token_id: int) -> np.ndarray:
        return self.append([token_id])

    def append(self, ids: list[int]) -> np.ndarray:
        return self._run([[int(t) for t in ids]], self.past)[0, -1]

    def rewind(self, length: int) -> bool:
        self.past = {name: value[:, :, :length] for name, value in self.past.items()}
        self.length = length
        return True

    def prefill_batch(self, sequences: list[list[int]]) -> np.ndarray:
        self.length = 0
        return self._run([list(s) for s in sequences], self._empty_past(len(sequences)))[:, -1]

    def append_batch(self, sequences: list[list[int]]) -> np.ndarray:
        return self._run([list(s) for s in sequences], self.past)[:, -1]
