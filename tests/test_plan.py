"""`packager plan` from a config.json alone: exact parameters, KV cache, rows, largest context."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import onnxruntime_profile, run_cli
from packager.errors import PackagerError
from packager.labels import human_context
from packager.plan import architecture, plan, row
from packager.profiles import resolve_target

# The public Llama 3.2 1B shape: 1,235,814,400 parameters with tied embeddings.
LLAMA_1B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
            "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 128256, "max_position_embeddings": 131072, "tie_word_embeddings": True, "head_dim": 64}


@pytest.fixture()
def llama_1b(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_1B))
    return tmp_path


def test_parameters_are_exact_and_kv_follows_the_formula(llama_1b: Path) -> None:
    a = architecture(LLAMA_1B)
    assert a.parameters == 1_235_814_400 and a.decoder
    assert (a.layers, a.kv_heads, a.head_dim) == (16, 8, 64)
    r = row(a, resolve_target("phone"), "fp16", 8192, None)
    # the tied table's second copy (the embedding's lookup: plan.mapped_embedding) is mapped, the phone's app loading
    # the .onnx of a model with mapped tables (packager/mobile.py loads_onnx), not model.ort
    assert r.kv_cache_bytes == 2 * 16 * 8 * 64 * 8192 * 2 and r.weights_bytes == 1_235_814_400 * 2
    assert r.mapped_bytes == 128256 * 2048 * 2
    onnxruntime = dataclasses.replace(resolve_target("rpi5"), decoder_runtime=None)
    mapped = row(a, onnxruntime, "fp16", 8192, None)
    assert mapped.weights_bytes == 1_235_814_400 * 2 and mapped.mapped_bytes == 128256 * 2048 * 2
    assert r.peak_low_bytes < r.peak_high_bytes and not r.planning_only
    assert row(a, resolve_target("phone"), "int4", 8192, 4).planning_only


def test_int8_counts_a_tied_tables_two_8_bit_copies_resident() -> None:
    """On an exported graph (onnxruntime) the dynamic quantizer quantizes a tied embedding's lookup table and its
    lm_head apart: both copies are resident weights (measured on scripts/bench_multimodal.py's E2B-plan bundle, 201
    MiB inline where one copy counted 135), and only the lm_head's is read for a token; an untied model's two tables
    are its parameters already."""
    onnxruntime = dataclasses.replace(resolve_target("rpi5"), decoder_runtime=None)
    tied = row(architecture(LLAMA_1B), onnxruntime, "int8", 4096, None)
    table = 128256 * 2048
    assert tied.weights_bytes == 1_235_814_400 + table and tied.mapped_bytes == 0
    untied_arch = architecture({**LLAMA_1B, "tie_word_embeddings": False})
    untied = row(untied_arch, onnxruntime, "int8", 4096, None)
    assert untied.weights_bytes == 1_235_814_400 + table
    # the bound reads the same bytes a token: every weight but the lookup's table
    assert tied.decode_bound_tokens_per_s == pytest.approx(untied.decode_bound_tokens_per_s)


def test_untied_embeddings_count_twice() -> None:
    untied = architecture({**LLAMA_1B, "tie_word_embeddings": False})
    assert untied.parameters == 1_235_814_400 + 128256 * 2048


def test_plan_rows_and_largest_context(llama_1b: Path) -> None:
    # The Jetson's runtime base includes the CUDA context (runtime.gpu_context_bytes): int4 (0.625 bytes a
    # parameter with its fp32 scales, as the recipe writes it) fits at 256 tokens, not at 1K.
    p = plan(llama_1b, resolve_target("jetson-orin-nano"), ["int4", "fp16"], [256, 131072])
    assert [(r.precision, r.context) for r in p.rows] == [("int4", 256), ("int4", 131072), ("fp16", 256),
                                                          ("fp16", 131072)]
    fits = {(r.precision, r.context): r.fits for r in p.rows}
    assert fits[("int4", 256)] and not fits[("int4", 131072)]
    assert p.rows[0].runtime_base_bytes > resolve_target("jetson-orin-nano").runtime.gpu_context_bytes
    assert any("CUDA context" in n for n in p.notes)
    largest = p.max_context["int4"]
    assert 256 <= largest < 131072 and largest % 256 == 0
    assert row(p.architecture, resolve_target("jetson-orin-nano"), "int4", largest, None).fits
    assert not row(p.architecture, resolve_target("jetson-orin-nano"), "int4", largest + 256, None).fits


def test_the_1b_class_fits_rpi5_at_4k_and_plan_names_the_int8_cache_where_it_goes_further(llama_1b: Path,
                                                                                          tmp_path: Path) -> None:
    """Issue 19: the Llama-3.2-1B shape at int4 fits rpi5's 1.5 GB at 4K (onnxruntime-genai, MatMulNBits in int8 at
    block 128: [decoder_int4]; its 16-bit KV cache). Where the runtime's int8 KV cache (--fit auto's lever: one
    buffer, as the others) fits a longer context, plan says how long, with the same rule as the row it plans with
    that cache: against rpi5's 16-bit cache and rpi5-genai's fp32 one alike."""
    p = plan(llama_1b, resolve_target("rpi5"), ["int4"])
    assert p.max_context["int4"] >= 4096 and p.rows[0].kv_bits == 16
    assert p.smaller_kv == "int8" and p.max_context_smaller_kv["int4"] > p.max_context["int4"]
    genai = resolve_target("rpi5-genai")
    g = plan(llama_1b, genai, ["int4"])
    assert g.rows[0].kv_bits == 32 and g.max_context["int4"] < p.max_context["int4"]
    assert g.smaller_kv == "int8" and g.max_context_smaller_kv["int4"] > g.max_context["int4"]
    int8 = dataclasses.replace(genai, session=dataclasses.replace(
        genai.session, config={**genai.session.config, "genai.kv_cache": "int8"}))
    longest = g.max_context_smaller_kv["int4"]
    assert row(g.architecture, int8, "int4", longest, None).fits
    assert not row(g.architecture, int8, "int4", longest + 256, None).fits
    # the onnxruntime path (run.py's loop) has no smaller cache to offer
    assert plan(llama_1b, resolve_target(str(onnxruntime_profile(tmp_path))), ["int4"]).smaller_kv == ""
    proc = run_cli("plan", str(llama_1b / "config.json"), "--target", "rpi5-genai", "--precision", "int4")
    assert proc.returncode == 0, proc.stderr
    assert f"int4: fits up to {human_context(g.max_context['int4'])} tokens of context; with an int8 KV cache up to " \
        f"{human_context(longest)}" in proc.stdout


def test_plan_cli_json(llama_1b: Path) -> None:
    proc = run_cli("plan", str(llama_1b / "config.json"), "--target", "phone", "--context", "2K", "--context", "8K",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["parameters"] == 1_235_814_400 and len(out["rows"]) == 8
    for r in out["rows"]:
        assert {"precision", "context", "weights_bytes", "kv_cache_bytes", "peak_high_bytes", "fits"} <= set(r)


def test_plan_refuses_a_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(PackagerError, match="no config.json"):
        plan(tmp_path, resolve_target("phone"))
    proc = run_cli("plan", str(tmp_path), "--target", "phone")
    assert proc.returncode == 5 and "no config.json" in proc.stderr


def test_the_docs_plan_tables_are_generated_not_typed() -> None:
    """docs/llms.md's and README.md's tables of published configs are `scripts/plan_table.py`'s output (--write): a
    change to the memory model or a profile that moves them fails here until they are written again."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "plan_table.py"
    proc = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
