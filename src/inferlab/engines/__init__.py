"""The registry: one line per method. The CLI choices, the contract test and the report
all read it, so adding a method is one file and one line here."""

from __future__ import annotations

from .base import Engine, EngineError, EngineUnsupported

# name -> "module:Class" (a module of this package, or a dotted path); imported on use
REGISTRY: dict[str, str] = {
    "eager-nocache": "eager_nocache:EagerNoCache",
    "kv-cache": "kv_cache:KVCache",
    "torch-int8": "torch_int8:TorchInt8",
    "torch-int8-study": "torch_int8_study:TorchInt8Study",
    "torch-int8-weight-only": "torch_int8_weight_only:TorchInt8WeightOnly",
    "torch-compile": "torch_compile:TorchCompile",
    "onnx": "onnx_fp32:OnnxFp32",
    "onnx-int8": "onnx_int8:OnnxInt8",
    "onnx-int4": "onnx_fused:OnnxInt4",
    "native-int4": "native_int4:NativeInt4",
    "llama-cpp-q4_1": "llama_cpp:LlamaCppQ4_1",
    "llama-cpp-q8_0": "llama_cpp:LlamaCppQ8_0",
    "llama-cpp-q4_0": "llama_cpp:LlamaCppQ4_0",
    "llama-cpp-q4_k_m": "llama_cpp:LlamaCppQ4_K_M",
    "llama-cpp-q5_k_m": "llama_cpp:LlamaCppQ5_K_M",
    "llama-cpp-q6_k": "llama_cpp:LlamaCppQ6_K",
    "openvino-int8": "openvino_engine:OpenVinoInt8",
    "openvino-int4": "openvino_engine:OpenVinoInt4",
    "ort-genai-int8": "ort_genai:OrtGenAIInt8",
    "ort-genai-int4": "ort_genai:OrtGenAIInt4",
}



def method_names() -> list[str]:
    return list(REGISTRY)


def engine_path(name: str) -> str:
    """'package.module:Class' of a method; what a worker process is told to import."""
    if name not in REGISTRY:
        raise KeyError(f"unknown method '{name}' (valid: {', '.join(REGISTRY)})")
    module, cls = REGISTRY[name].split(":")
    return f"{module}:{cls}" if "." in module else f"{__name__}.{module}:{cls}"


def import_engine(path: str) -> type[Engine]:
    import importlib

    module, cls = path.split(":")
    return getattr(importlib.import_module(module), cls)


def engine_class(name: str) -> type[Engine]:
    return import_engine(engine_path(name))


def default_methods(model) -> list[str]:
    """defaults.DEFAULT_FAMILIES resolved for a model: per family the first method that applies
    (the last one when none does: it then reports why it was skipped)."""
    from .. import defaults

    return [next((m for m in family if engine_class(m).applies_to(model)), family[-1])
            for family in defaults.DEFAULT_FAMILIES]


def has_prepare(name: str) -> bool:
    """Whether the method has a one-time conversion step (it overrides Engine.prepare)."""
    return engine_class(name).prepare is not Engine.prepare


__all__ = ["Engine", "EngineError", "EngineUnsupported", "REGISTRY", "method_names", "engine_class", "engine_path",
           "default_methods", "has_prepare", "import_engine"]
