"""The 16-bit KV cache of genai bundles (issue 19, item 3): runtimes/genai_kv16.py turns the builder's attention
nodes to fp16 on an fp32 graph. A one-layer graph shaped as the builder writes it (packed qkv, rotary tables,
past and present sharing the cache's layout) runs in ONNX Runtime's CPU GroupQueryAttention both ways."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from packager.runtimes.genai_kv16 import kv_to_fp16

HEADS, KV_HEADS, HEAD = 4, 2, 16
HIDDEN = HEADS * HEAD
QKV = (HEADS + 2 * KV_HEADS) * HEAD
MAX = 16


def builder_like_graph() -> onnx.ModelProto:
    """x [1, S, HIDDEN] -> MatMul (packed qkv) -> GroupQueryAttention with rotary -> out; past/present fp32."""
    rng = np.random.default_rng(0)
    angles = rng.uniform(0, 3, (MAX, HEAD // 2)).astype(np.float32)
    inits = [numpy_helper.from_array(rng.standard_normal((HIDDEN, QKV)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(np.cos(angles), "cos_cache"), numpy_helper.from_array(np.sin(angles), "sin_cache")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["qkv"]),
             helper.make_node("GroupQueryAttention", ["qkv", "", "", "past_key_values.0.key",
                                                      "past_key_values.0.value", "seqlens_k", "total_len",
                                                      "cos_cache", "sin_cache"],
                              ["attn", "present.0.key", "present.0.value"], domain="com.microsoft",
                              num_heads=HEADS, kv_num_heads=KV_HEADS, do_rotary=1),
             helper.make_node("Identity", ["attn"], ["out"])]
    cache = [1, KV_HEADS, "past", HEAD]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "s", HIDDEN]),
              helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, cache),
              helper.make_tensor_value_info("past_key_values.0.value", TensorProto.FLOAT, cache),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
              helper.make_tensor_value_info("total_len", TensorProto.INT32, [])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, "s", HIDDEN]),
               helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, cache),
               helper.make_tensor_value_info("present.0.value", TensorProto.FLOAT, cache)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def run(model: onnx.ModelProto, cache_type: type) -> list[np.ndarray]:
    """A 5-token prompt, then one more token on the cache it wrote."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, 6, HIDDEN)).astype(np.float32)
    empty = np.zeros((1, KV_HEADS, 0, HEAD), cache_type)
    out, key, value = session.run(None, {"x": x[:, :5], "past_key_values.0.key": empty,
                                         "past_key_values.0.value": empty, "seqlens_k": np.array([4], np.int32),
                                         "total_len": np.array(5, np.int32)})
    step = session.run(None, {"x": x[:, 5:], "past_key_values.0.key": key, "past_key_values.0.value": value,
                              "seqlens_k": np.array([5], np.int32), "total_len": np.array(6, np.int32)})
    return [out, key, *step]


def test_the_cache_is_fp16_and_the_outputs_match_fp32() -> None:
    model = builder_like_graph()
    reference = run(model, np.float32)
    assert kv_to_fp16(model) == 1
    onnx.checker.check_model(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}
    assert {types[n] for n in types if n.startswith(("past_key_values.", "present."))} == {TensorProto.FLOAT16}
    assert types["x"] == types["out"] == TensorProto.FLOAT   # the rest of the graph as the builder made it
    half = run(model, np.float16)
    assert half[1].dtype == half[4].dtype == np.float16 and half[0].dtype == np.float32
    for ours, theirs in zip(half, reference, strict=True):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours.astype(np.float32), theirs, atol=2e-2, rtol=2e-2)


def test_a_graph_without_attention_is_left_alone() -> None:
    model = builder_like_graph()
    del model.graph.node[1:]
    before = model.SerializeToString()
    assert kv_to_fp16(model) == 0
    assert model.SerializeToString() == before


def test_plan_counts_the_fp16_cache_and_its_attention_scratch() -> None:
    """genai.kv_cache = "float16": 16-bit cache, one buffer, and every head's scores of a chunk (measured on the 1B
    shape: the run's peak grows by what the cache saves; packager/runtimes/genai.py)."""
    import dataclasses

    from packager.profiles import resolve_target
    from packager.runtimes import runtime_for

    base = resolve_target("rpi5-genai")

    def memory(kv: str):  # type: ignore[no-untyped-def]
        config = {**base.session.config, "genai.kv_cache": kv}
        profile = dataclasses.replace(base, session=dataclasses.replace(base.session, config=config))
        return runtime_for(profile).decoder_memory(profile, "int4")

    half, full = memory("float16"), memory("float")
    assert (half.kv_bits, full.kv_bits) == (16, 32) and half.kv_copies == full.kv_copies == (1.0, 1.0)
    assert half.score_heads == 0 and full.score_heads == base.session.intra_op_threads


def test_rpi4_and_rpi5_decoders_take_the_16_bit_cache_in_chunks_of_64() -> None:
    """Their default (issue 19, item 3: a 16-bit cache by default, the 8-bit one as the option): the chunk of 64 bounds
    the fp16 attention's scores, which at 256 took back what the cache saves (1B shape at 4K: 1.24 GiB against fp32's
    1.26; at 64, 1.14). plan counts 16 bits and every head's scores of a 64-token chunk; int8 stays the lever."""
    from packager.profiles import resolve_target
    from packager.runtimes import profile_for_model, runtime_for

    for name in ("rpi4", "rpi5"):
        genai, _ = profile_for_model(resolve_target(name), "decoder", "LlamaForCausalLM")
        runtime = runtime_for(genai)
        mem = runtime.decoder_memory(genai, "int4")
        assert (mem.kv_bits, mem.prefill_tokens, mem.score_heads) == (16, 64, 0), name
        lever = runtime.smaller_kv_cache(genai)
        assert lever is not None and lever[1] == "int8"
