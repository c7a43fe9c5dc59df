"""inferlab's own decoder (engines/native/q4_*.c), compiled on this machine for this CPU.

The same weights as `onnx-int4` (4-bit by GGUF Q4_1's rule, the LM head 8-bit by Q8_0's; exact
for the bundled model, whose GGUF holds exactly those), but each product takes the block
offsets inside its dot product instead of the extra graph nodes ONNX Runtime needs for them,
and a decode step is one call into C with the KV cache kept in place."""

from __future__ import annotations

import os

from .. import defaults
from ..fsutil import build_folder
from ..models import artifact_folder
from . import llama_arch
from .base import Engine, EngineError, EngineUnsupported, Usage

RECIPE = "r6"  # bump when the packed layout changes: it is part of the cache key


class NativeInt4(Engine):
    profiler = "native"
    name = "native-int4"
    summary = ("inferlab's own C decoder (AVX2, AVX-VNNI or AVX-512 VNNI as the CPU has them, compiled "
               "on this machine): 4-bit weights by the Q4_1 rule with fp16 scales (exact when the model "
               "came from Q4_1), 8-bit LM head, int8 activations, the offsets inside each dot product; "
               "prompts and batches as matrix products; the Llama family (Llama, Qwen2) and GPT-2")
    max_batch = 64  # sequences of one call: the KV cache holds KV_SLOTS positions for each
    setup_in_ttft = "none: the preallocated cache is overwritten from slot 0 (a larger batch: a larger cache)"

    @classmethod
    def applies_to(cls, model) -> bool:
        return cls.unavailable(model) is None

    @classmethod
    def unavailable(cls, model) -> str | None:
        from .native import decoder, library

        if missing := library.missing_cpu_flags():
            return f"this CPU lacks {', '.join(missing)}"
        try:
            decoder.check_supported(llama_arch.read_config(model.path))
        except (EngineUnsupported, OSError, ValueError, KeyError) as e:
            return str(e)
        return None

    def _library(self) -> tuple[str, bool]:
        from .native import library

        try:
            return library.library_path()
        except library.NativeBuildError as e:
            if library.missing_cpu_flags():
                raise EngineUnsupported(f"not supported on this machine: {e}") from e
            raise EngineError(str(e)) from e

    def artifact(self) -> tuple[str, bool]:
        from .native import decoder

        dest = artifact_folder(self.model_ref, "native", f"q4-b{decoder.BLOCK}-{RECIPE}")
        return dest, build_folder(dest, lambda tmp: decoder.pack_model(self.model_ref.path, tmp))

    def usage(self, prompt: str, new_tokens: int) -> Usage:
        folder, _ = self.artifact()
        tokenizer = os.path.join(self.model_ref.path, "tokenizer.json")
        code = f"""import numpy as np
from tokenizers import Tokenizer
from inferlab.engines.native.decoder import NativeDecoder

tokenizer = Tokenizer.from_file({tokenizer!r})
decoder = NativeDecoder({folder!r}, threads={self.threads}, slots={defaults.KV_SLOTS})
token = int(np.argmax(decoder.prefill(tokenizer.encode({prompt!r}).ids)))
out = [token]
for _ in range({new_tokens} - 1):
    token = int(np.argmax(decoder.decode(token)))
    out.append(token)
print(tokenizer.decode(out))
"""
        return Usage(folder, "inferlab (its C decoder, built for this CPU on first use), tokenizers", code,
                     also=[tokenizer], note="inferlab's own decoder: the packed weights (this folder) and the C library, "
                          "called through its Python wrapper")

    def prepare(self) -> bool:
        library_hit = self._library()[1]
        return self.artifact()[1] and library_hit

    def load(self) -> None:
        from .native.decoder import NativeDecoder

        self.library, _ = self._library()
        self.folder, _ = self.artifact()
        self.decoder = NativeDecoder(self.folder, self.threads, defaults.KV_SLOTS)
        self.reset_counters()

    def prefill(self, token_ids, all_logits=False):
        return self._prompt(self.decoder.prefill, len(token_ids), token_ids, all_logits)

    def decode(self, token_id):
        logits = self.decoder.decode(token_id)
        self.clock["decode_tokens"] += 1
        return logits

    def rewind(self, length):
        return self.decoder.rewind(length)

    def prefill_batch(self, sequences):
        return self._prompt(self.decoder.prefill_batch, sum(map(len, sequences)), sequences)

    def append_batch(self, sequences):
        if all(len(s) == 1 for s in sequences):  # a decode step of every sequence
            logits = self.decoder.append_batch(sequences)
            self.clock["decode_tokens"] += len(sequences)
            return logits
        return self._prompt(self.decoder.append_batch, sum(map(len, sequences)), sequences)

    def append(self, token_ids):
        return self._prompt(self.decoder.append, len(token_ids), token_ids)

    def _prompt(self, call, tokens: int, *args):
        """A call that runs a prompt's tokens (several in one call: the prefill's work), booked
        to prefill on the decoder's clock; what the clock held before it was decode steps."""
        self._book("decode")
        logits = call(*args)
        self._book("prefill")
        self.clock["prefill_tokens"] += tokens
        return logits

    def _book(self, phase: str) -> None:
        """The decoder's clock since the last booking, to `phase` (read between calls, not
        after every step: see NativeDecoder.phase_seconds)."""
        self.clock[f"{phase}_ms"] += sum(self.decoder.phase_seconds().values()) * 1e3

    def reset_counters(self) -> None:
        self.decoder.phase_seconds()  # drop what the clock holds
        self.clock = {"prefill_ms": 0.0, "prefill_tokens": 0, "decode_ms": 0.0, "decode_tokens": 0}

    def counters(self) -> dict:
        """The decoder's own clock: wall time inside the C forward pass (OpenMP region), so
        the harness's figures minus these are the Python and ctypes cost of a call."""
        self._book("decode")
        return dict(self.clock)

    def info(self) -> dict:
        from .native import library

        d = self.decoder
        build = d.build_report
        return {
            "weight_bytes": d.weight_bytes,
            "file_bytes": os.path.getsize(os.path.join(self.folder, "weights.bin")),
            "details": {
                "dtype": ("int4 weights by the Q4_1 rule (block 32, fp16 scale and offset), 8-bit LM "
                          "head (Q8_0 rule), int8 activations per block of 32, fp32 norms and biases, "
                          f"{d.attention} attention products (fp32 sums)"),
                "weights_exact": build.get("exact") == build.get("matrices"),
                "weight_matrices": build.get("matrices"),
                "max_weight_error_relative": build.get("max_relative_error"),
                "threads": self.threads, "artifact": self.folder, "library": self.library,
                "compiler_flags": " ".join(library.COMPILER_FLAGS),
                # the 4-bit products' kernel (library.PATHS) and attention's arithmetic
                # (library.ATTENTIONS), each chosen for this CPU
                "instruction_set": f"{d.path} products, {d.attention} attention",
                "kv_cache": f"in place, {'bf16' if d.attention == 'bf16' else 'fp16'}, {d.slots} slots per layer",
                "kv_bytes_per_value": 2, "weight_bits": 4, "activation_bits": 8,
                "lm_head_last_position_only": True,
                "bytes_read_per_step": d.weight_bytes - d.lookup_only_bytes,
            },
        }
