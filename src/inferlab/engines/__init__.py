"""The registry: one line per method. The CLI choices, the contract test and the report
all read it, so adding a method is one file and one line here."""

from __future__ import annotations

from .base import Engine, EngineError

# name -> "module:Class"; imported on use so that listing methods needs no torch
REGISTRY: dict[str, str] = {
    "eager-nocache": "eager_nocache:EagerNoCache",
    "kv-cache": "kv_cache:KVCache",
    "torch-int8": "torch_int8:TorchInt8",
    "onnx": "onnx_fp32:OnnxFp32",
    "onnx-int8": "onnx_int8:OnnxInt8",
}

PREPARED = {"onnx", "onnx-int8"}  # methods with a cached one-time conversion step


def method_names() -> list[str]:
    return list(REGISTRY)


def engine_class(name: str) -> type[Engine]:
    import importlib

    if name not in REGISTRY:
        raise KeyError(f"unknown method '{name}' (valid: {', '.join(REGISTRY)})")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


__all__ = ["Engine", "EngineError", "REGISTRY", "PREPARED", "method_names", "engine_class"]
