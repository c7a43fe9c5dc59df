"""ONNX Runtime GenAI: the graph its own model builder makes (fused attention, KV buffers
shared in place, MatMulNBits weights), run by its own runtime (`og.Generator`), one
`append_tokens` call per prefill or decode step so the harness keeps every clock.

The builder (onnxruntime-genai 0.18.0) imports names that exist only in transformers 5.x, and
the rest of inferlab stays on 4.57 (optimum-onnx and optimum-intel need <4.58): `make venv`
installs transformers 5.5.4 and what it adds into a folder of its own, put first on the path
of the conversion process only (requirements-genai-builder.txt says which)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from importlib import metadata
from typing import ClassVar

import numpy as np

from .. import defaults
from ..fsutil import build_folder
from ..models import artifact_folder
from .base import Engine, EngineError, EngineUnsupported, Usage
from .onnx_common import onnx_file_bytes, read_graph_stats, write_graph_stats
from .tools import run_tool

RECIPE = "r1"  # bump when the conversion below changes: it is part of the cache key
BUILDER_PATH = os.path.join(sys.prefix, "genai-builder")  # transformers 5.x, builder only


def builder_transformers_version() -> str:
    for entry in os.listdir(BUILDER_PATH) if os.path.isdir(BUILDER_PATH) else []:
        if entry.startswith("transformers-") and entry.endswith(".dist-info"):
            return entry[len("transformers-"):-len(".dist-info")]
    raise EngineError(f"ONNX Runtime GenAI's model builder needs transformers 5.x in {BUILDER_PATH}: "
                      "run `make venv`")


class OrtGenAI(Engine):
    precision: ClassVar[str]  # the builder's --precision
    max_batch = 256  # GeneratorParams' batch_size
    setup_in_ttft = ("rewind_to(0) of the generator kept for the batch size (a new batch size: a new "
                     "generator and its KV buffers)")

    def artifact(self) -> tuple[str, bool]:
        tag = (f"{self.precision}-genai{metadata.version('onnxruntime-genai')}"
               f"-tf{builder_transformers_version()}-{RECIPE}")
        dest = artifact_folder(self.model_ref, "ort_genai", tag)

        def build(tmp):
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                p for p in (BUILDER_PATH, os.environ.get("PYTHONPATH")) if p))
            cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", self.model_ref.path,
                   "-o", tmp, "-p", self.precision, "-e", "cpu", "-c", os.path.join(tmp, "builder-cache")]
            done, last = run_tool(cmd, "the GenAI model builder", env)
            if "is not currently supported" in last:
                raise EngineUnsupported("not supported for this model: ONNX Runtime GenAI's model "
                                        f"builder has no converter for its architecture ({last})")
            if done.returncode != 0 or not os.path.isfile(os.path.join(tmp, "model.onnx")):
                raise EngineError(f"the GenAI model builder failed: {last}")
            shutil.rmtree(os.path.join(tmp, "builder-cache"), ignore_errors=True)
            write_graph_stats(tmp, {"command": f"python -m onnxruntime_genai.models.builder "
                                               f"-p {self.precision} -e cpu"})

        return dest, build_folder(dest, build)

    def prepare(self) -> bool:
        return self.artifact()[1]

    def usage(self, prompt: str, new_tokens: int) -> Usage:
        folder, _ = self.artifact()
        options = json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": self.threads}}}})
        code = f"""import onnxruntime_genai as og

config = og.Config({folder!r})
config.overlay({options!r})
model = og.Model(config)
tokenizer = og.Tokenizer(model)
ids = tokenizer.encode({prompt!r})
params = og.GeneratorParams(model)
params.set_search_options(max_length=len(ids) + {new_tokens}, min_length=len(ids) + {new_tokens}, do_sample=False)
generator = og.Generator(model, params)
generator.append_tokens(ids)
while not generator.is_done():
    generator.generate_next_token()
print(tokenizer.decode(generator.get_sequence(0)[len(ids):]))
"""
        return Usage(folder, "onnxruntime-genai", code)

    def load(self) -> None:
        import onnxruntime_genai as og

        self.og = og
        self.folder, _ = self.artifact()
        config = og.Config(self.folder)
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": self.threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        with open(os.path.join(self.folder, "genai_config.json")) as f:
            self.genai_config = json.load(f)
        context = self.genai_config["model"].get("context_length") or defaults.KV_SLOTS
        self.slots = min(defaults.KV_SLOTS, context)  # GenAI refuses a longer max_length
        self.generator = None

    def _start(self, batch: int) -> None:
        """A generator for `batch` sequences, with its KV buffers (self.slots long per sequence,
        shared between past and present). An application keeps one and rewinds it between
        prompts rather than allocating ~100 MB of buffers per request: the last one is reused
        when the batch size is the same (measured, 43-token prompt: 71-74 ms against 82-102 ms
        with a new generator inside the clock)."""
        if self.generator is not None and self.batch == batch:
            self.generator.rewind_to(0)
            return
        self.generator = None  # its buffers go before the next one's are allocated
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.slots, do_sample=False, batch_size=batch)
        self.generator = self.og.Generator(self.model, params)
        self.batch = batch

    def prefill(self, token_ids, all_logits=False):
        self._start(1)
        self.generator.append_tokens([list(token_ids)])
        if all_logits:  # the builder's graph computes the LM head on every prompt position
            return np.asarray(self.generator.get_output("logits"))[0].copy()
        return np.asarray(self.generator.get_logits()).reshape(-1).copy()

    def decode(self, token_id):
        return self.append([token_id])

    def append(self, token_ids):
        return self.append_batch([token_ids])[0]

    def rewind(self, length):
        if self.batch > 1:  # GenAI rewinds a batch to 0 only
            return False
        self.generator.rewind_to(length)
        return True

    def prefill_batch(self, sequences):
        self._start(len(sequences))
        self.generator.append_tokens(np.asarray(sequences, dtype=np.int32))
        return self._batch_logits()

    def append_batch(self, sequences):
        if self.batch == 1:
            self.generator.append_tokens(np.asarray(sequences, dtype=np.int32))
            return self._batch_logits()
        # GenAI takes a batch's tokens once; after that its generator appends its own greedy
        # choice (generate_next_token), which must be the one the harness made from the logits
        if any(len(s) != 1 for s in sequences):
            raise EngineUnsupported("ONNX Runtime GenAI takes a batch's tokens once: a context "
                                    "(depth) before a batch's prompts is not possible")
        self.generator.generate_next_token()
        chosen = np.asarray(self.generator.get_next_tokens()).reshape(-1).tolist()
        if chosen != [int(s[0]) for s in sequences]:
            raise EngineError(f"ONNX Runtime GenAI's greedy tokens {chosen} differ from the "
                              f"harness's {[s[0] for s in sequences]} (a tie in the logits?)")
        return self._batch_logits()

    def _batch_logits(self) -> np.ndarray:
        return np.asarray(self.generator.get_logits()).reshape(self.batch, -1).copy()

    def info(self) -> dict:
        stats = read_graph_stats(self.folder)
        search = self.genai_config.get("search", {})
        return {
            "weight_bytes": stats["initializer_bytes"],
            "file_bytes": onnx_file_bytes(self.folder),
            "details": {
                "dtype": f"{self.precision} weights by ONNX Runtime GenAI's model builder "
                         "(MatMulNBits, symmetric, blocks of 32; int8 compute)",
                "onnxruntime_genai": self.og.__version__, "threads": self.threads,
                "artifact": self.folder, "builder": stats.get("build", {}).get("command"),
                "kv_cache": f"shared buffer ({search.get('past_present_share_buffer')}), "
                            f"{self.slots} slots, allocated once per batch size and rewound per prompt",
                "kv_bytes_per_value": 4, "activation_bits": 8,
                "weight_bits": {"int8": 8, "int4": 4}.get(self.precision),
                "lm_head_last_position_only": False,
                "quantized_nodes": stats["ops"].get("MatMulNBits", 0),
                "bytes_read_per_step": stats["initializer_bytes"] - stats["lookup_only_bytes"],
            },
        }


class OrtGenAIInt4(OrtGenAI):
    name = "ort-genai-int4"
    summary = "ONNX Runtime GenAI, its model builder's int4 graph, its runtime's generator"
    precision = "int4"


class OrtGenAIInt8(OrtGenAI):
    name = "ort-genai-int8"
    summary = "ONNX Runtime GenAI, its model builder's int8 graph, its runtime's generator"
    precision = "int8"
