"""inferlab's fused ONNX graph: block quantization layouts, exactness on grid weights, the KV
slots it refuses to outgrow, and models the builder does not cover (against the fp32
reference, with native-int4: test_exact_4bit.py)."""

import numpy as np
import pytest

from inferlab.engines import EngineError, EngineUnsupported, engine_class
from inferlab.engines.blockquant import affine4, pack, symmetric8, unpack
from tests.tiny import on_q4_1_grid

PROMPT = [5, 17, 42, 99, 3, 250, 7]


def test_pack_roundtrip_keeps_the_even_element_in_the_low_nibble():
    q = np.arange(32, dtype=np.uint8).reshape(1, 1, 32) % 16
    packed = pack(q, 4)
    assert packed.shape == (1, 1, 16) and packed[0, 0, 0] == (0 | 1 << 4)
    assert (unpack(packed, 4) == q).all()


def test_affine4_is_exact_on_q4_1_grid_weights_and_bounded_elsewhere():
    grid = affine4(on_q4_1_grid((64, 128)))
    assert grid.exact and grid.max_error < 1e-6
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.02, (64, 128)).astype(np.float32)
    q = affine4(w)
    assert not q.exact
    # rounding to the nearest level: never more than half a step
    assert q.max_error <= 0.5 * q.scales.max() * (1 + 1e-5)


def test_symmetric8_is_exact_on_q8_0_grid_weights():
    rng = np.random.default_rng(2)
    levels = rng.integers(-127, 128, (16, 64, 1)).astype(np.float32).reshape(16, 2, 32)
    levels[..., 0] = 127  # the block's largest magnitude is level 127 under Q8_0's rule
    w = (levels * rng.uniform(1e-4, 1e-3, (16, 2, 1)).astype(np.float32)).reshape(16, 64)
    assert symmetric8(w).exact
    assert not symmetric8(rng.normal(0, 1, (16, 64)).astype(np.float32)).exact


@pytest.mark.parametrize("bits", [4, 8])
def test_matmulnbits_reads_our_layout(bits):
    """One MatMulNBits node over our packed weights equals numpy's product with the
    dequantized matrix (accuracy_level 0: fp32 compute), offsets added like the graph does."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from inferlab.engines import onnx_llama_graph as graph

    w = on_q4_1_grid((96, 64), seed=3) if bits == 4 else np.random.default_rng(3).normal(0, 0.05, (96, 64))
    q = affine4(w) if bits == 4 else symmetric8(w.astype(np.float32))
    g = graph._Graph()
    out = g.matmul("x", "layer", q)
    model = helper.make_model(
        helper.make_graph(g.nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 3, 96])], g.inits),
        opset_imports=[helper.make_opsetid("", graph.OPSET), helper.make_opsetid("com.microsoft", 1)])
    for node in model.graph.node:
        for a in node.attribute:
            if a.name == "accuracy_level":
                a.i = 0
    x = np.random.default_rng(4).normal(0, 1, (1, 3, 64)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x})[0]
    assert np.allclose(got, x @ q.dequantize().T, rtol=1e-4, atol=1e-4)


def test_fused_graph_refuses_a_sequence_beyond_its_slots(grid_llama, tmp_path):
    import onnx

    from inferlab.engines import llama_arch
    from inferlab.engines import onnx_llama_graph as graph
    from inferlab.engines.onnx_fused import FusedOrtDecoder

    model, _ = graph.build(llama_arch.load_weights(grid_llama.path), llama_arch.read_config(grid_llama.path), 4, slots=8)
    path = str(tmp_path / "model.onnx")
    onnx.save_model(model, path)
    dec = FusedOrtDecoder(path, 1)
    dec.prefill(PROMPT)
    dec.decode(1)  # 8 tokens: every slot used
    with pytest.raises(EngineError, match="longer than the 8 KV slots"):
        dec.decode(1)


def test_fused_graph_says_which_models_it_does_not_cover(tiny_refs):
    with pytest.raises(EngineUnsupported, match="not supported for this model.*gpt2"):
        engine_class("onnx-int4")(tiny_refs["gpt2"], threads=1).prepare()
    from inferlab.engines.onnx_llama_graph import check_supported

    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
              "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
    with pytest.raises(EngineUnsupported, match="rope scaling"):
        check_supported(config)
