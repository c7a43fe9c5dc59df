"""The engine contract, over every registered method, on tiny GPT-2 and Llama models."""

import numpy as np
import pytest
import torch

from inferlab.engines import REGISTRY, EngineError, EngineUnsupported, engine_class, method_names
from inferlab.engines.base import Engine
from inferlab.harness import argmax, generate
from inferlab.results import EngineDetails

FP32_METHODS = {"eager-nocache", "kv-cache", "onnx", "torch-compile"}  # must match the reference exactly
ARCHS = ("gpt2", "llama")
PROMPT = [5, 17, 42, 99, 3, 250, 7]


@pytest.fixture(scope="module")
def loaded(tiny_refs):
    cache = {}

    def get(method, arch):
        if (method, arch) not in cache:
            if (method.startswith("openvino") or method == "torch-compile") and arch == "gpt2":
                # each export or compile takes ~15 s even for a tiny model; our code is the same
                # for both architectures, and the gpt2-random run of the closing checks covers GPT-2
                pytest.skip(f"{method} is tested on the tiny Llama only")
            if method == "ort-genai-int4" and arch == "gpt2":  # the builder's run takes ~8 s
                pytest.skip("the GenAI builder's refusal of GPT-2 is tested with ort-genai-int8")
            engine = engine_class(method)(tiny_refs[arch], threads=1)
            try:
                engine.prepare()
            except EngineUnsupported as e:  # llama.cpp needs a GGUF: test_real_model covers it
                pytest.skip(str(e))
            engine.load()
            cache[(method, arch)] = engine
        return cache[(method, arch)]

    return get


def test_registry_lists_the_studys_methods():
    assert {"eager-nocache", "kv-cache", "torch-int8", "onnx", "onnx-int8"} <= set(method_names())
    for name in REGISTRY:
        cls = engine_class(name)
        assert cls.name == name and cls.summary


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", method_names())
def test_contract(loaded, method, arch):
    engine = loaded(method, arch)
    vocab = 320
    logits = np.asarray(engine.prefill(PROMPT))
    assert logits.shape == (vocab,) and np.isfinite(logits).all()
    step = np.asarray(engine.decode(argmax(logits)))
    assert step.shape == (vocab,) and np.isfinite(step).all()
    # every position's logits (the quality pass); the last row is what a plain prefill returns
    window = np.asarray(engine.prefill(PROMPT, all_logits=True))
    assert window.shape == (len(PROMPT), vocab)
    # int8 engines quantize activations per call, so the row depends a little on the others
    atol = 1e-3 if method in FP32_METHODS else 0.05
    whole = np.asarray(engine.prefill(PROMPT))
    assert np.allclose(window[-1], whole, atol=atol)
    # a sweep's depth: the prompt's tail continues a sequence already in the cache
    engine.prefill(PROMPT[:4])
    continued = np.asarray(engine.append(PROMPT[4:]))
    assert continued.shape == (vocab,) and np.allclose(continued, whole, atol=atol)
    # a sweep's next run at that depth: back to the context, then the same prompt again
    engine.decode(argmax(continued))
    if engine.rewind(4):
        assert np.allclose(np.asarray(engine.append(PROMPT[4:])), continued, atol=1e-5)
    info = engine.info()
    assert info["weight_bytes"] > 0 and info["file_bytes"] > 0
    # the details every engine states: the figures the roofline and the advice compute with
    d = EngineDetails.from_dict(info["details"])
    assert d.weight_bits in (32, 16, 8, 6, 5, 4) and d.activation_bits in (32, 16, 8), info["details"]
    assert d.kv_bytes_per_value is not None and d.dtype
    assert type(engine).setup_in_ttft != Engine.setup_in_ttft  # what it does per sequence inside TTFT
    assert d.bytes_read_per_step is None or 0 < d.bytes_read_per_step <= info["weight_bytes"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", method_names())
def test_each_row_of_a_batch_is_its_sequence_alone(loaded, method, arch):
    """A batch of equally long prompts: each row's logits, after the prefill and after a
    decode step, are those of its sequence run alone (up to the batched arithmetic)."""
    engine = loaded(method, arch)
    if engine.max_batch < 2:
        pytest.skip(f"{method} decodes one sequence at a time")
    prompts = [PROMPT, PROMPT[::-1], [11] * len(PROMPT)]
    alone_first, alone_next = [], []
    for prompt in prompts:
        first = np.asarray(engine.prefill(prompt))
        alone_first.append(first)
        alone_next.append(np.asarray(engine.decode(argmax(first))))
    # int8 engines quantize activations per call: the batch's rows share one scale
    atol = 1e-3 if method in FP32_METHODS else 0.1
    batch_first = np.asarray(engine.prefill_batch(prompts))
    assert batch_first.shape == (3, 320)
    assert np.allclose(batch_first, alone_first, atol=atol)
    batch_next = np.asarray(engine.append_batch([[argmax(f)] for f in alone_first]))
    assert np.allclose(batch_next, alone_next, atol=atol)
    if engine.rewind(len(PROMPT)):  # every sequence back to its prompt, then the same step
        again = np.asarray(engine.append_batch([[argmax(f)] for f in alone_first]))
        assert np.allclose(again, batch_next, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
# torch-compile: its growth test compares its tokens with the reference's (one compile less)
@pytest.mark.parametrize("method", sorted(FP32_METHODS - {"kv-cache", "torch-compile"}))
def test_fp32_methods_reproduce_the_reference_tokens(loaded, method, arch):
    ref = generate(loaded("kv-cache", arch), PROMPT, 20).tokens
    assert generate(loaded(method, arch), PROMPT, 20).tokens == ref


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_logits_match_no_cache_logits(loaded, arch):
    a, b = loaded("kv-cache", arch), loaded("eager-nocache", arch)
    la, lb = a.prefill(PROMPT), b.prefill(PROMPT)
    for _ in range(5):
        t = argmax(la)
        assert torch.allclose(la, lb, atol=1e-4)
        la, lb = a.decode(t), b.decode(t)


@pytest.mark.parametrize("arch", ARCHS)
def test_torch_int8_quantizes_every_linear_layer(loaded, arch):
    d = loaded("torch-int8", arch).info()["details"]
    n_linear = 2 * (4 if arch == "gpt2" else 7) + 1  # per block + lm_head
    assert d["quantized_layers"] == n_linear
    assert d["conv1d_converted_to_linear"] == (8 if arch == "gpt2" else 0)
    assert loaded("torch-int8", arch).info()["weight_bytes"] < d["weight_bytes_before"]


def test_the_studys_int8_quantizes_only_gpt2s_lm_head(loaded):
    """What the original study's INT8 measured: quantize_dynamic on nn.Linear as found leaves
    GPT-2's Conv1D blocks in fp32 and quantizes the LM head alone."""
    d = loaded("torch-int8-study", "gpt2").info()["details"]
    assert d["quantized_layers"] == 1 and d["conv1d_converted_to_linear"] == 0
    assert loaded("torch-int8-study", "llama").info()["details"]["quantized_layers"] == 2 * 7 + 1


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_weight_only_quantizes_every_linear_layer_and_only_the_weights(loaded, arch):
    from inferlab.engines.torch_int8_weight_only import Int8WeightOnlyLinear

    engine = loaded("torch-int8-weight-only", arch)
    d = engine.info()["details"]
    layers = [m for m in engine.model.modules() if isinstance(m, Int8WeightOnlyLinear)]
    assert d["quantized_layers"] == len(layers) == 2 * (4 if arch == "gpt2" else 7) + 1
    assert not any(isinstance(m, torch.nn.Linear) for m in engine.model.modules())
    assert engine.info()["weight_bytes"] < d["weight_bytes_before"]
    x = torch.randn(3, layers[0].in_features)
    w = layers[0].dequantized_weight()
    # the kernel's product is the dequantized weight's, up to rounding the input to bf16
    assert torch.allclose(layers[0](x), torch.nn.functional.linear(x.bfloat16().float(), w)
                          + (0 if layers[0].bias is None else layers[0].bias), rtol=1e-2, atol=1e-2)


def test_int8_weight_only_rounds_each_weight_to_its_channels_grid():
    from inferlab.engines.torch_int8_weight_only import Int8WeightOnlyLinear

    linear = torch.nn.Linear(64, 8)
    with torch.no_grad():
        linear.weight[3] *= 100  # one channel far larger: its scale must not spill to the others
    layer = Int8WeightOnlyLinear(linear)
    step = linear.weight.abs().amax(dim=1, keepdim=True) / 127
    error = (layer.dequantized_weight() - linear.weight).abs()
    assert (error <= step / 2 + 1e-7).all()
    assert layer.qweight.dtype == torch.int8 and layer.qweight.abs().max() == 127


def test_torch_compile_moves_to_a_bigger_static_cache_and_keeps_the_tokens(tiny_refs, monkeypatch):
    """A sequence longer than the static cache: a cache twice the size, refilled, compiled again."""
    import inferlab.engines.torch_compile as tc

    assert [tc.cache_slots(n) for n in (1, 256, 257, 600)] == [256, 256, 512, 1024]
    monkeypatch.setattr(tc, "MIN_CACHE_SLOTS", 8)
    engine = tc.TorchCompile(tiny_refs["llama"], threads=1)
    engine.load()
    ref = engine_class("kv-cache")(tiny_refs["llama"], threads=1)
    ref.load()
    expected = generate(ref, PROMPT, 8).tokens
    assert generate(engine, PROMPT, 8).tokens == expected
    assert sorted(engine.cache_sizes) == [8, 16]
    # a second sequence goes back to the small cache: nothing is compiled again
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    assert generate(engine, PROMPT, 8).tokens == expected
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_int8_quantizes_matmuls_and_shrinks(loaded, arch):
    e = loaded("onnx-int8", arch)
    d = e.info()["details"]
    assert d["quantized_nodes"] > 0
    assert e.info()["weight_bytes"] < loaded("onnx", arch).info()["weight_bytes"]


def test_conv1d_to_linear_is_exact(tiny_refs):
    from transformers import AutoModelForCausalLM

    from inferlab.engines.torch_common import conv1d_to_linear

    model = AutoModelForCausalLM.from_pretrained(tiny_refs["gpt2"].path).eval()
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        before = model(ids).logits
        assert conv1d_to_linear(model) == 8
        after = model(ids).logits
    assert torch.allclose(before, after, atol=1e-5)


def test_int8_that_quantizes_nothing_is_an_error(tiny_refs, monkeypatch):
    import inferlab.engines.torch_int8 as ti

    monkeypatch.setattr("torch.ao.quantization.quantize_dynamic", lambda model, *a, **k: model)
    engine = ti.TorchInt8(tiny_refs["llama"], threads=1)
    with pytest.raises(EngineError, match="0 layers"):
        engine.load()


def test_bytes_read_per_step_leave_out_lookup_only_tables(loaded):
    """Tied LM head: the table is streamed every step. Quantized LM head: the fp32 table is
    only gathered (one row), so it is held but not read."""
    for method in ("kv-cache", "onnx"):
        info = loaded(method, "llama").info()
        assert info["details"]["bytes_read_per_step"] == info["weight_bytes"], method
    for method in ("torch-int8", "onnx-int8"):
        info = loaded(method, "llama").info()
        table = 320 * 64 * 4  # vocab x hidden fp32
        assert info["weight_bytes"] - info["details"]["bytes_read_per_step"] >= table, method


def test_onnx_int8_quantizes_the_tied_lm_head(loaded):
    import onnx

    e = loaded("onnx-int8", "llama")
    graph = onnx.load(e.model_path).graph
    inits = {i.name for i in graph.initializer}
    fp32_const_matmuls = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")
                          and n.input[1] in inits]
    assert fp32_const_matmuls == []  # every weight matmul, LM head included, is quantized
    assert any("lm_head" in n.name for n in graph.node if n.op_type == "MatMulNBits")


def test_methods_with_a_conversion_step_are_known_from_the_engine():
    from inferlab.engines import has_prepare

    assert {m for m in method_names() if has_prepare(m)} == {
        "onnx", "onnx-int8", "onnx-int4", "native-int4", "llama-cpp-q4_1", "llama-cpp-q8_0", "llama-cpp-q4_0",
        "llama-cpp-q4_k_m", "llama-cpp-q5_k_m", "llama-cpp-q6_k", "openvino-int8", "openvino-int4",
        "ort-genai-int8", "ort-genai-int4"}


@pytest.mark.parametrize("method", ["onnx", "onnx-int8"])
def test_onnx_prefill_runs_the_lm_head_on_the_last_position_only(loaded, method):
    ort = loaded(method, "llama").ort
    last = ort._run([PROMPT], ort._empty_past(1))[0]
    every = ort._run([PROMPT], ort._empty_past(1), keep_all=True)[0]
    assert last.shape == (1, 320) and every.shape == (len(PROMPT), 320)
    assert np.allclose(last[0], every[-1], atol=1e-4)
    assert loaded(method, "llama").info()["details"]["lm_head_last_position_only"]


def test_torch_int8_quantizes_the_loaded_model_in_place(tiny_refs, monkeypatch):
    """No deep copy: a copy would hold a second fp32 model in the method's peak memory."""
    import inferlab.engines.torch_quantized as tq
    from inferlab.engines.torch_int8 import TorchInt8

    loaded_models = []
    real = tq.load_hf_model

    def spy(ref, threads):
        loaded_models.append(real(ref, threads))
        return loaded_models[-1]

    monkeypatch.setattr(tq, "load_hf_model", spy)
    engine = TorchInt8(tiny_refs["llama"], threads=1)
    engine.load()
    assert engine.model is loaded_models[0]


def test_onnx_load_and_info_parse_no_graph(loaded, monkeypatch):
    """The graph's statistics were kept when it was built: loading must not parse hundreds of
    MB of protobuf inside the timed load and the method's memory."""
    import onnx

    loaded("onnx-int8", "llama")  # prepared and cached
    monkeypatch.setattr(onnx, "load", lambda *a, **k: pytest.fail("onnx.load during load/info"))
    monkeypatch.setattr(onnx, "load_model", lambda *a, **k: pytest.fail("onnx.load during load/info"))
    from inferlab.engines.onnx_int8 import OnnxInt8

    engine = OnnxInt8(loaded("onnx-int8", "llama").model_ref, threads=1)
    engine.load()
    info = engine.info()
    assert info["weight_bytes"] > 0 and info["details"]["quantized_nodes"] > 0


def test_default_methods_take_the_next_of_a_family_where_one_does_not_apply(tiny_refs):
    from inferlab import defaults
    from inferlab.engines import default_methods

    llama, gpt2 = default_methods(tiny_refs["llama"]), default_methods(tiny_refs["gpt2"])
    assert llama == list(defaults.DEFAULT_METHODS) and "onnx-int4" in llama
    # the fused graph covers Llama only: GPT-2 gets the ONNX family's next method
    assert gpt2 == [m if m != "onnx-int4" else "onnx-int8" for m in llama]
