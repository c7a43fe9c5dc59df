"""What the PyTorch engines share: loading and the report of what
was built. Subclasses only say how prefill and one decode step run."""

from __future__ import annotations

import torch

from .base import Engine, Usage
from .torch_common import (
    folder_weight_file_bytes,
    load_hf_model,
    lookup_only_bytes,
    module_weight_bytes,
    parameter_count,
)


class TorchEngine(Engine):
    profiler = "torch"
    # what `usage` adds between loading the model with transformers and generating: this
    # method's own change to the model; None when it has no form outside inferlab
    usage_transform: str | None = ""

    def load(self) -> None:
        self.model = self.build_model()

    def build_model(self):
        return load_hf_model(self.model_ref, self.threads)

    def details(self) -> dict:
        import transformers

        return {"dtype": "float32", "weight_bits": 32, "activation_bits": 32, "threads": torch.get_num_threads(),
                "kv_bytes_per_value": 0 if self.steps_are_full_forwards else 4,
                "attention": self.model.config._attn_implementation,
                "torch": torch.__version__, "transformers": transformers.__version__}

    def usage(self, prompt: str, new_tokens: int) -> Usage | None:
        if self.usage_transform is None:
            return None
        folder = self.model_ref.path
        cache = ", use_cache=False" if self.steps_are_full_forwards else ""
        code = f"""import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads({self.threads})
tokenizer = AutoTokenizer.from_pretrained({folder!r})
model = AutoModelForCausalLM.from_pretrained({folder!r}).eval()
{self.usage_transform}inputs = tokenizer({prompt!r}, return_tensors="pt", return_token_type_ids=False)
with torch.inference_mode():
    out = model.generate(**inputs, max_new_tokens={new_tokens}, min_new_tokens={new_tokens}, do_sample=False{cache})
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:]))
"""
        return Usage(folder, "torch transformers", code)

    def info(self) -> dict:
        weight_bytes = module_weight_bytes(self.model)
        details = self.details()
        details["bytes_read_per_step"] = weight_bytes - lookup_only_bytes(self.model)
        return {
            "weight_bytes": weight_bytes,
            "file_bytes": folder_weight_file_bytes(self.model_ref.path),
            "parameters": parameter_count(self.model),
            "details": details,
        }
