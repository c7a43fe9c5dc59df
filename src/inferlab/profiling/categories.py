"""Operator name -> category, for PyTorch (aten::, quantized::), ONNX Runtime op types and the
native decoder's phases (native::).

Categories (every phase's shares add up to 100 % with `overhead`, the time inside the phase
that no operator covers: Python, dispatch, framework bookkeeping)."""

from __future__ import annotations

CATEGORIES = ("matmul", "attention", "normalization", "activation", "elementwise",
              "layout/copies", "quantize/dequantize", "embedding/lookup", "sampling", "other",
              "overhead")

_EXACT = {
    # matrix multiply
    "aten::mm": "matmul", "aten::addmm": "matmul", "aten::bmm": "matmul", "aten::baddbmm": "matmul",
    "aten::matmul": "matmul", "aten::linear": "matmul", "aten::mv": "matmul",
    "aten::_addmm_activation": "matmul", "quantized::linear_dynamic": "matmul",
    "quantized::linear_dynamic_fp16": "matmul", "mkldnn::_linear_pointwise": "matmul",
    "aten::_weight_int8pack_mm": "matmul", "aten::_weight_int4pack_mm": "matmul",
    "aten::_weight_int4pack_mm_for_cpu": "matmul",
    "MatMul": "matmul", "Gemm": "matmul", "MatMulInteger": "matmul", "MatMulNBits": "matmul",
    "DynamicQuantizeMatMul": "matmul", "FusedMatMul": "matmul", "MatMulIntegerToFloat": "matmul",
    "QGemm": "matmul", "QLinearMatMul": "matmul",
    # attention
    "aten::scaled_dot_product_attention": "attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
    "aten::_scaled_dot_product_attention_math": "attention",
    "aten::_scaled_dot_product_efficient_attention": "attention",
    "aten::softmax": "attention", "aten::_softmax": "attention", "Softmax": "attention",
    "Attention": "attention", "MultiHeadAttention": "attention",
    "GroupQueryAttention": "attention", "RotaryEmbedding": "attention",
    # normalization
    "aten::layer_norm": "normalization", "aten::native_layer_norm": "normalization",
    "aten::rms_norm": "normalization", "aten::_fused_rms_norm": "normalization",
    "aten::rsqrt": "normalization", "aten::pow": "normalization", "aten::mean": "normalization",
    "aten::var_mean": "normalization", "LayerNormalization": "normalization",
    "SimplifiedLayerNormalization": "normalization", "SkipLayerNormalization": "normalization",
    "SkipSimplifiedLayerNormalization": "normalization", "ReduceMean": "normalization",
    "Sqrt": "normalization", "Pow": "normalization", "Reciprocal": "normalization",
    # activation
    "aten::gelu": "activation", "aten::silu": "activation", "aten::silu_": "activation",
    "aten::tanh": "activation", "aten::sigmoid": "activation", "aten::relu": "activation",
    "Gelu": "activation", "FastGelu": "activation", "BiasGelu": "activation",
    "QuickGelu": "activation", "Sigmoid": "activation", "Tanh": "activation", "Relu": "activation",
    # elementwise
    "aten::add": "elementwise", "aten::add_": "elementwise", "aten::mul": "elementwise",
    "aten::mul_": "elementwise", "aten::div": "elementwise", "aten::div_": "elementwise",
    "aten::sub": "elementwise", "aten::neg": "elementwise", "aten::where": "elementwise",
    "aten::masked_fill": "elementwise", "aten::cos": "elementwise", "aten::sin": "elementwise",
    "aten::eq": "elementwise", "aten::gt": "elementwise", "aten::lt": "elementwise",
    "aten::le": "elementwise", "aten::ge": "elementwise", "aten::bitwise_and": "elementwise",
    "aten::bitwise_or": "elementwise", "aten::exp": "elementwise", "aten::fill_": "elementwise",
    "aten::zero_": "elementwise",
    "Add": "elementwise", "Mul": "elementwise", "Div": "elementwise", "Sub": "elementwise",
    "Neg": "elementwise", "Where": "elementwise", "Equal": "elementwise", "Less": "elementwise",
    "Greater": "elementwise", "And": "elementwise", "Or": "elementwise", "Not": "elementwise",
    "Exp": "elementwise", "Cos": "elementwise", "Sin": "elementwise", "Max": "elementwise",
    "Min": "elementwise", "Range": "elementwise", "Trilu": "elementwise",
    "ConstantOfShape": "elementwise", "BiasAdd": "elementwise",
    # layout / copies
    "aten::cat": "layout/copies", "aten::copy_": "layout/copies", "aten::clone": "layout/copies",
    "aten::contiguous": "layout/copies", "aten::transpose": "layout/copies",
    "aten::view": "layout/copies", "aten::reshape": "layout/copies",
    "aten::permute": "layout/copies", "aten::expand": "layout/copies",
    "aten::slice": "layout/copies", "aten::select": "layout/copies",
    "aten::as_strided": "layout/copies", "aten::t": "layout/copies",
    "aten::unsqueeze": "layout/copies", "aten::squeeze": "layout/copies",
    "aten::_unsafe_view": "layout/copies", "aten::split": "layout/copies",
    "aten::split_with_sizes": "layout/copies", "aten::narrow": "layout/copies",
    "aten::chunk": "layout/copies", "aten::flatten": "layout/copies",
    "aten::to": "layout/copies", "aten::_to_copy": "layout/copies", "aten::empty": "layout/copies",
    "aten::empty_like": "layout/copies", "aten::empty_strided": "layout/copies",
    "aten::resize_": "layout/copies", "aten::new_empty": "layout/copies",
    "aten::lift_fresh": "layout/copies", "aten::detach": "layout/copies",
    "aten::alias": "layout/copies", "aten::index": "layout/copies",
    "aten::arange": "layout/copies", "aten::ones": "layout/copies", "aten::zeros": "layout/copies",
    "aten::full": "layout/copies", "aten::tensor": "layout/copies",
    "aten::expand_as": "layout/copies", "aten::repeat": "layout/copies",
    "Reshape": "layout/copies", "Transpose": "layout/copies", "Concat": "layout/copies",
    "Slice": "layout/copies", "Unsqueeze": "layout/copies", "Squeeze": "layout/copies",
    "Expand": "layout/copies", "Cast": "layout/copies", "Shape": "layout/copies",
    "Identity": "layout/copies", "Split": "layout/copies", "Flatten": "layout/copies",
    "Tile": "layout/copies", "ScatterND": "layout/copies",
    # quantize / dequantize
    "aten::quantize_per_tensor": "quantize/dequantize",
    "aten::quantize_per_tensor_dynamic": "quantize/dequantize",
    "aten::_choose_qparams_per_tensor": "quantize/dequantize",
    "aten::dequantize": "quantize/dequantize",
    "DynamicQuantizeLinear": "quantize/dequantize", "DequantizeLinear": "quantize/dequantize",
    "QuantizeLinear": "quantize/dequantize",
    # embedding / lookup
    "aten::embedding": "embedding/lookup", "aten::index_select": "embedding/lookup",
    "Gather": "embedding/lookup", "GatherElements": "embedding/lookup",
    "GatherND": "embedding/lookup",
    # sampling
    "aten::argmax": "sampling", "aten::topk": "sampling", "aten::multinomial": "sampling",
    "aten::max": "sampling", "ArgMax": "sampling", "TopK": "sampling",
    # inferlab's native decoder (its own clock's phases)
    "native::matmul_q4 (q, k, v, o)": "matmul", "native::matmul_q4 (gate, up, down)": "matmul",
    "native::matmul_q8": "matmul", "native::attention": "attention",
    "native::norm_quantize": "normalization", "native::activation_quantize": "activation",
    "native::residual_add": "elementwise", "native::embedding": "embedding/lookup",
}


def categorize(op: str) -> str:
    """Category of an operator name; unknown names are 'other' (never dropped)."""
    if op in _EXACT:
        return _EXACT[op]
    if op.startswith("quantized::"):
        return "quantize/dequantize"
    return "other"
