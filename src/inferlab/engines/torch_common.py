"""Shared pieces of the PyTorch engines: loading, byte counting, window logits."""

from __future__ import annotations

import ctypes
import gc
import os

import torch
from torch import nn

from ..models import ModelRef, WEIGHT_SUFFIXES


def load_hf_model(ref: ModelRef, threads: int):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32)
    model.eval()
    return model


def folder_weight_file_bytes(folder: str) -> int:
    return sum(
        os.path.getsize(os.path.join(folder, f))
        for f in os.listdir(folder)
        if f.endswith(WEIGHT_SUFFIXES)
    )


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds, quantized tensors included (int8 data + per-channel scales)."""
    if t.is_quantized:
        n = t.numel() * t.element_size()
        if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            s, z = t.q_per_channel_scales(), t.q_per_channel_zero_points()
            n += s.numel() * s.element_size() + z.numel() * z.element_size()
        else:
            n += 8 + 8  # one scale, one zero point
        return n
    return t.numel() * t.element_size()


def module_weight_bytes(model: torch.nn.Module) -> int:
    """Parameters and buffers as held, tied tensors counted once; dynamic-quantized Linear
    layers hold their weight in packed params, which are read through `weight()`."""
    seen, total = set(), 0

    def add(t, shared=True):
        nonlocal total
        if t is None:
            return
        key = (t.data_ptr(), t.numel())
        if not shared or key not in seen:  # an unpacked int8 weight is a fresh copy: never shared
            seen.add(key)
            total += tensor_bytes(t)

    for module in model.modules():
        for p in module.parameters(recurse=False):
            add(p)
        for b in module.buffers(recurse=False):
            add(b)
        if hasattr(module, "_packed_params") and callable(getattr(module, "weight", None)):
            add(module.weight(), shared=False)
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            add(bias, shared=False)
    return total


def lookup_only_bytes(model: torch.nn.Module) -> int:
    """Bytes of embedding tables that no matmul reads: a decode step reads one row of them, so
    they do not count towards the bytes a step streams (a tied LM head does read its table)."""
    linear_ptrs = {m.weight.data_ptr() for m in model.modules()
                   if isinstance(m, torch.nn.Linear)}
    total = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding) and m.weight.data_ptr() not in linear_ptrs:
            total += tensor_bytes(m.weight)
    return total


def parameter_count(model: torch.nn.Module) -> int:
    seen, n = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            n += p.numel()
    return n


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace transformers' Conv1D (GPT-2: y = x @ W + b, W [in, out]) by an equivalent
    nn.Linear (W^T), so that quantize_dynamic sees it. Returns how many were replaced."""
    from transformers.pytorch_utils import Conv1D

    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                linear = nn.Linear(n_in, n_out, bias=child.bias is not None)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    if child.bias is not None:
                        linear.bias.copy_(child.bias)
                setattr(parent, child_name, linear)
                replaced += 1
    return replaced


def release_file_mapping(model: nn.Module) -> None:
    """Copy the tensors left in fp32 (embedding, norms) out of the weight file's memory map.

    transformers maps the safetensors file and the parameters view it; quantizing reads every
    fp32 weight, so the whole file stays resident (538 MB for SmolLM2) as long as one tensor
    still views the mapping. Measured on SmolLM2: steady RSS 1148 MB before, 723 MB after."""
    gc.collect()
    return_freed_heap()  # before the copies: what quantizing freed is not added to their peak
    with torch.no_grad():
        for module in model.modules():
            for p in module.parameters(recurse=False):
                p.data = p.data.clone()
            for name, b in list(module.named_buffers(recurse=False)):
                module._buffers[name] = b.clone()
    gc.collect()
    return_freed_heap()


def return_freed_heap() -> None:
    """Give the memory that Python and torch freed back to the OS (glibc's malloc_trim).

    glibc keeps freed blocks of a few MB on its heap (its mmap threshold rises after the first
    large free), so quantizing layer by layer leaves hundreds of MB resident but unused:
    measured on SmolLM2 (torch-int8-weight-only) 984 MB resident after load, 656 MB after a
    trim. Without glibc there is nothing to call."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
