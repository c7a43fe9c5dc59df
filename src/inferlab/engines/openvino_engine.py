"""OpenVINO: the model exported by optimum-intel (`optimum-cli export openvino`, weights
compressed by NNCF, data-free), run with the OpenVINO runtime alone. The export keeps the KV
cache as the model's internal state (a stateful model); the harness drives it one call per
step like every other engine.

One change after the export: the LM head gets a `logits_to_keep` input (a prefill computes
the last position's logits only, the same work as the other engines; the quality pass asks for
all). The CPU plugin's own choices are read back and reported: its KV cache precision (u8 by
default on x86) and the group size of its dynamic int8 quantization of activations."""

from __future__ import annotations

import json
import os
import sys
from importlib import metadata
from typing import ClassVar

import numpy as np

from ..fsutil import build_folder
from ..models import artifact_folder
from .base import Engine, EngineError, Usage
from .tools import run_tool

RECIPE = "r1"  # bump when the export or the patch below changes: it is part of the cache key
XML = "openvino_model.xml"
BIN = "openvino_model.bin"
LOGITS_TO_KEEP = "logits_to_keep"
BYTES_PER_VALUE = {"u8": 1, "i8": 1, "f16": 2, "bf16": 2, "f32": 4}


def keep_last_logits(model) -> None:
    """Slice the LM head's input to the last `logits_to_keep` positions (0 = all), in place."""
    import openvino as ov
    from openvino import opset13 as ops

    result = model.outputs[0].get_node()
    head = result.input_value(0).get_node()
    while head.get_type_name() != "MatMul":  # past converts/reshapes to the vocabulary MatMul
        if head.get_input_size() == 0:
            raise EngineError("OpenVINO export: no MatMul produces the logits")
        head = head.input_value(0).get_node()
    keep = ops.parameter([1], ov.Type.i64, name=LOGITS_TO_KEEP)
    keep.output(0).get_tensor().set_names({LOGITS_TO_KEEP})
    hidden = head.input_value(0)
    start = ops.negative(keep)
    stop = ops.constant(np.array([2**63 - 1], np.int64))
    step = ops.constant(np.array([1], np.int64))
    axis = ops.constant(np.array([1], np.int64))
    head.input(0).replace_source_output(ops.slice(hidden, start, stop, step, axis).output(0))
    model.add_parameters([keep])
    model.validate_nodes_and_infer_types()


class OpenVino(Engine):
    weight_format: ClassVar[str]  # optimum-cli's --weight-format
    export_args: ClassVar[tuple[str, ...]] = ()
    variant: ClassVar[str]  # names the export in the cache key
    max_batch = 256  # the stateful model's batch axis (beam_idx keeps each row's state)
    setup_in_ttft = "reset_state(): the stateful model's KV state starts empty"

    def artifact(self) -> tuple[str, bool]:
        tag = (f"{self.variant}-ov{metadata.version('openvino')}"
               f"-oi{metadata.version('optimum-intel')}-nncf{metadata.version('nncf')}-{RECIPE}")
        dest = artifact_folder(self.model_ref, "openvino", tag)

        def build(tmp):
            import openvino as ov

            raw = os.path.join(tmp, "export")
            cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
            cmd = [cli, "export", "openvino", "--model", self.model_ref.path,
                   "--task", "text-generation-with-past", "--weight-format", self.weight_format,
                   *self.export_args, raw]
            done, last = run_tool(cmd, "optimum-cli export openvino")
            if done.returncode != 0 or not os.path.isfile(os.path.join(raw, XML)):
                raise EngineError(f"optimum-cli export openvino failed: {last}")
            core = ov.Core()
            model = core.read_model(os.path.join(raw, XML))
            keep_last_logits(model)
            ov.save_model(model, os.path.join(tmp, XML), compress_to_fp16=False)
            with open(os.path.join(tmp, "export.json"), "w") as f:
                json.dump({"command": cmd[1:-1], "compression": compression_summary(done.stdout)}, f)

        return dest, build_folder(dest, build)

    def usage(self, prompt: str, new_tokens: int) -> Usage:
        folder = os.path.join(self.artifact()[0], "export")  # optimum-intel's own export
        code = f"""from optimum.intel import OVModelForCausalLM
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained({folder!r})
model = OVModelForCausalLM.from_pretrained({folder!r}, ov_config={{
    "INFERENCE_NUM_THREADS": {self.threads}, "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}})
inputs = tokenizer({prompt!r}, return_tensors="pt", return_token_type_ids=False)
out = model.generate(**inputs, max_new_tokens={new_tokens}, min_new_tokens={new_tokens}, do_sample=False)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:]))
"""
        return Usage(folder, "openvino optimum-intel transformers", code,
                     note="the folder optimum-cli exported; inferlab runs the same weights with only "
                          "the last position's logits kept")

    def prepare(self) -> bool:
        return self.artifact()[1]

    def load(self) -> None:
        import openvino as ov

        self.folder, _ = self.artifact()
        core = ov.Core()
        self.compiled = core.compile_model(os.path.join(self.folder, XML), "CPU", {
            "INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        self.inputs = {i.get_any_name() for i in self.compiled.inputs}
        self.length = 0

    def _run(self, rows: list[list[int]], keep_all: bool) -> np.ndarray:
        """One call for every sequence (rows of equal length); logits [batch, positions, vocab]."""
        batch, n = len(rows), len(rows[0])
        positions = np.arange(self.length, self.length + n, dtype=np.int64)
        feeds = {"input_ids": np.asarray(rows, np.int64),
                 "attention_mask": np.ones((batch, self.length + n), np.int64),
                 "position_ids": np.repeat(positions[None], batch, axis=0),
                 "beam_idx": np.arange(batch, dtype=np.int32),  # each row keeps its own state
                 LOGITS_TO_KEEP: np.asarray([0 if keep_all else 1], np.int64)}
        self.request.infer({k: v for k, v in feeds.items() if k in self.inputs})
        self.length += n
        return self.request.get_tensor("logits").data.copy()

    def prefill(self, token_ids, all_logits=False):
        self.request.reset_state()  # a new sequence: the KV state starts empty
        self.length = 0
        logits = self._run([list(token_ids)], all_logits)[0]
        return logits if all_logits else logits[-1]

    def decode(self, token_id):
        return self.append([token_id])

    def append(self, token_ids):
        return self._run([[int(t) for t in token_ids]], False)[0, -1]

    def rewind(self, length):
        """Cut every KV state variable ([batch, heads, positions, head dim]) to `length`
        positions; False (fill again) if a state is not laid out that way, or when the plugin
        keeps the cache compressed: reading a u8 cache out and writing it back quantizes it
        again (measured on SmolLM2: logits up to 0.5-0.7 off a fresh fill; 0.0 in f32)."""
        import openvino as ov

        if self.compiled.get_property("KV_CACHE_PRECISION").to_string() != "f32":
            return False
        states = self.request.query_state()
        if any(len(s.state.shape) != 4 or s.state.shape[2] != self.length for s in states):
            return False
        for state in states:
            state.state = ov.Tensor(np.ascontiguousarray(state.state.data[:, :, :length]))
        self.length = length
        return True

    def prefill_batch(self, sequences):
        self.request.reset_state()
        self.length = 0
        return self._run([list(s) for s in sequences], False)[:, -1]

    def append_batch(self, sequences):
        return self._run([list(s) for s in sequences], False)[:, -1]

    def info(self) -> dict:
        import openvino as ov

        size = os.path.getsize(os.path.join(self.folder, BIN))
        kv = self.compiled.get_property("KV_CACHE_PRECISION").to_string()  # e.g. "u8"
        try:
            with open(os.path.join(self.folder, "export.json")) as f:
                export = json.load(f)
        except (OSError, ValueError):
            export = {}
        return {
            "weight_bytes": size,
            "file_bytes": size + os.path.getsize(os.path.join(self.folder, XML)),
            "details": {
                "dtype": f"weights {self.weight_format} ({' '.join(self.export_args) or 'defaults'}), "
                         f"NNCF data-free; activations dynamically quantized in groups of "
                         f"{self.compiled.get_property('DYNAMIC_QUANTIZATION_GROUP_SIZE')}",
                "compression": export.get("compression"),
                "export_command": " ".join(export.get("command", [])),
                "openvino": ov.__version__, "threads": self.threads, "artifact": self.folder,
                "kv_cache_precision": kv,
                "kv_bytes_per_value": BYTES_PER_VALUE.get(kv, 4), "activation_bits": 8,
                "weight_bits": {"int8": 8, "int4": 4}.get(self.weight_format),
                "lm_head_last_position_only": LOGITS_TO_KEEP in self.inputs,
                # the tied token table is the LM head's weight: the whole file is read per step
                "bytes_read_per_step": size,
            },
        }


def compression_summary(stdout: str) -> list[str]:
    """NNCF's bit-width table rows from the export's output (what was compressed to what)."""
    rows = [line.strip() for line in stdout.splitlines() if line.strip().startswith("│")]
    return [" ".join(r.replace("│", " ").split()) for r in rows if any(c.isdigit() for c in r)]


class OpenVinoInt8(OpenVino):
    name = "openvino-int8"
    summary = ("OpenVINO, weights int8 (per output channel, asymmetric; NNCF via optimum-intel), "
               "KV cache in the model's state")
    weight_format = "int8"
    variant = "int8"


class OpenVinoInt4(OpenVino):
    name = "openvino-int4"
    summary = ("OpenVINO, weights int4 (groups of 32, asymmetric, all layers; NNCF via "
               "optimum-intel; the tied embedding stays int8), KV cache in the model's state")
    weight_format = "int4"
    variant = "int4-g32-r1"
    # 576 (SmolLM2's width) is not a multiple of the default group of 128; ratio 1: every layer
    export_args = ("--group-size", "32", "--ratio", "1.0")
