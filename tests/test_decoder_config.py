"""`packager plan` on today's decoder configs: analytic counts (against transformers' meta-device count where the
host's transformers has the class), the KV cache per layer, mapped per-layer embeddings, and the one-sentence errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import packager
from conftest import run_cli
from packager.decoder_config import FULL, SLIDING, read
from packager.decoder_peak import activation_bytes
from packager.errors import ExitCode, PackagerError
from packager.plan import _from_meta_device, architecture, decoder_memory, kv_cache, plan, row, shape
from packager.profiles import resolve_target

CONFIGS = Path(packager.__file__).parent / "data" / "configs"
PUBLISHED = sorted(p.stem for p in CONFIGS.glob("*.json"))


def config(name: str) -> dict[str, Any]:
    return dict(json.loads((CONFIGS / f"{name}.json").read_text(encoding="utf-8")))


def small(model_type: str, **keys: Any) -> dict[str, Any]:
    """A small config of the family, with what makes it differ (biases, windows, sharing)."""
    base = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 2048}
    return {"model_type": model_type, **base, **keys}


# One small config of each family, with its transformers class: the analytic count must equal the meta-device one.
FAMILY_CONFIGS = [
    ("LlamaForCausalLM", small("llama", attention_bias=True, mlp_bias=True)),
    ("LlamaForCausalLM", small("llama", tie_word_embeddings=True)),
    ("MistralForCausalLM", small("mistral", sliding_window=256)),
    ("GraniteForCausalLM", small("granite")),
    ("SmolLM3ForCausalLM", small("smollm3", pad_token_id=0)),
    ("Qwen2ForCausalLM", small("qwen2")),
    ("Qwen3ForCausalLM", small("qwen3", head_dim=32)),
    ("Phi3ForCausalLM", small("phi3", pad_token_id=0)),
    ("Olmo2ForCausalLM", small("olmo2")),
    ("GemmaForCausalLM", small("gemma", head_dim=16)),
    ("Gemma2ForCausalLM", small("gemma2", head_dim=16, sliding_window=128)),
    ("Gemma3ForCausalLM", small("gemma3_text", head_dim=16, sliding_window=128, num_hidden_layers=7)),
    ("Gemma3nForCausalLM", small("gemma3n_text", head_dim=16, num_hidden_layers=10, num_kv_shared_layers=4,
                                 intermediate_size=[128] * 5 + [96] * 5, hidden_size_per_layer_input=8,
                                 vocab_size_per_layer_input=1000, laurel_rank=8,
                                 activation_sparsity_pattern=[0.0] * 10)),
]


@pytest.mark.parametrize(("arch", "cfg"), FAMILY_CONFIGS, ids=[f"{a}-{i}" for i, (a, _) in enumerate(FAMILY_CONFIGS)])
def test_analytic_count_equals_the_meta_device_count(arch: str, cfg: dict[str, Any]) -> None:
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, arch):
        pytest.skip(f"transformers {transformers.__version__} has no {arch}")
    full = {"architectures": [arch], **cfg}
    assert architecture(full).parameters == _from_meta_device(arch, full, "test").parameters


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_configs_plan_sanely(name: str) -> None:
    cfg = config(name)
    assert cfg["_source"].startswith("https://huggingface.co/")
    a = architecture(cfg)
    assert a.decoder and a.layers == len(a.attention) and 0 < a.effective_parameters <= a.parameters
    for target in ("rpi5", "rpi5-genai", "jetson-orin-nano"):
        profile = resolve_target(target)
        short, long = row(a, profile, "int4", 1024, None), row(a, profile, "int4", 8192, None)
        assert 0 < short.weights_bytes == long.weights_bytes and short.kv_cache_bytes <= long.kv_cache_bytes
        assert 0 < short.peak_low_bytes <= short.peak_high_bytes <= long.peak_high_bytes
        assert sum(long.kv_by_type.values()) == long.kv_cache_bytes


def test_llama_1b_matches_its_published_count() -> None:
    a = architecture(config("Llama-3.2-1B"))
    assert a.parameters == 1_235_814_400 and a.mapped_parameters == 0   # the model card's 1.24B, tied


def test_gemma4_e2b_maps_its_per_layer_embeddings_and_shares_kv() -> None:
    cfg = config("Gemma-4-E2B")
    d = read(cfg, "Gemma-4-E2B")
    text = cfg["text_config"]
    assert d.mapped_parameters == 262144 * 35 * 256           # the PLE table: vocab x layers x 256
    assert 2.2e9 < d.effective_parameters < 2.4e9             # "E2B": 2.3B effective
    owners = [layer for layer in d.layers if layer.owns_cache]
    assert len(owners) == 35 - text["num_kv_shared_layers"]  # 20 of 35 layers own no cache
    assert {(la.kind, la.head_dim) for la in d.layers} == {(SLIDING, 256), (FULL, 512)}
    a = architecture(cfg)
    r = row(a, resolve_target("rpi5-genai"), "int4", 8192, None)
    assert r.mapped_bytes == int(d.mapped_parameters * 0.625)
    assert r.weights_bytes < int(a.parameters * 0.625)        # the mapped table is not in the resident weights


def test_gemma4_e2b_on_the_onnxruntime_path_counts_a_chunk_and_maps_its_embeddings_copy() -> None:
    """rpi5 runs an E-class model on onnxruntime (the E-class exporter's graph): the device prefills it in chunks
    (targets/runtime/session.py), the last position's logits only; at int4 (rpi5's decoders: block 128, fp32 scales)
    the resident weights are 2.28B effective parameters at 0.53125 bytes, the lm_head's MatMulNBits holding the tied
    table; the embedding reads its own copy of it from a file of its own (recipes/nbits.untie_embedding), of which,
    as of the per-layer table, the loop feeds a pass a chunk's rows (packager/row_feed.py): 32 tokens at 8K
    (decoder_config.prefill_chunk). The recipe takes rpi5's [decoder_int4] (int8 compute), as a decoder on genai
    does, and the peak counts the copy MatMulNBits packs of each 4-bit weight at its block size, less the
    original it frees (nbits_extra)."""
    from packager.decoder_config import prefill_chunk
    from packager.estimate import nbits_extra
    from packager.estimate_prepack import SLICE_BYTES
    from packager.plan import as_packaged
    from packager.row_tables import fed_bytes
    from packager.runtimes.onnxruntime import ECLASS_SCORE_COPIES

    a = architecture(config("Gemma-4-E2B"))
    rpi5, _ = as_packaged(a, resolve_target("rpi5"))
    assert rpi5.runtime.package == "onnxruntime" and (rpi5.int4.compute, rpi5.int4.block_size) == ("int8", 128)
    r = row(a, rpi5, "int4", 8192, None)
    # a chunk's logits row, MLP and residual stream, and one layer's scores in the exported attention's buffers
    chunk, copies = prefill_chunk(8192), ECLASS_SCORE_COPIES   # the E-class exporter's attention
    assert chunk == 32
    assert r.activations_bytes == 4 * (262144 + chunk * (2 * 6144 + 4 * 1536)) + int(4 * chunk * 8 * 8192 * copies)
    assert r.weights_bytes == int(a.effective_parameters * (0.5 + 4 / 128))
    embedding = {"data": (262144 * 1536 // 2, 262144), "scales": (262144 * 1536 * 4 // 128, 262144)}
    assert r.mapped_bytes == a.mapped_parameters + 262144 * 1536 * (0.5 + 4 / 128)   # the PLE table's rows, the copy
    packed = a.effective_parameters * 0.5   # every MatMulNBits' 4-bit data, the tied lm_head's included
    # the loop feeds a pass a chunk's rows of each table: 32 x (8,960 + 768 + 48 bytes), well under a MiB
    touched = fed_bytes({**embedding, "ple": (a.mapped_parameters, 262144)}, chunk)
    assert touched == 32 * (8960 + 768 + 48)
    a76 = nbits_extra("int8", 128, False, ("arm64-dotprod",), 1536)   # the Pi 5's KleidiAI layout, K >= 1536
    assert r.peak_low_bytes >= r.runtime_base_bytes + r.weights_bytes + packed * a76[0] \
        + r.kv_cache_bytes + touched
    # the load is the floor: the original of one slice of the lm_head (192 MiB of 4-bit data: recipes/nbits.py
    # slice_wide_heads) beside its packed copy
    assert r.peak_low_bytes >= r.runtime_base_bytes + r.weights_bytes + SLICE_BYTES

    def peak(accuracy_level: int, block_size: int) -> tuple[int, int]:
        int4 = dataclasses.replace(rpi5.int4, accuracy_level=accuracy_level, block_size=block_size)
        got = row(a, dataclasses.replace(rpi5, int4=int4), "int4", 8192, None)
        return got.peak_low_bytes, got.peak_high_bytes

    # int8 compute packs more than fp32 compute at the same block, and more at a finer block (a scale and a sum each)
    assert peak(1, 128) < peak(4, 128) < peak(4, 32)
    # a finer block stores more scales: its bytes are the profile's
    fine = dataclasses.replace(rpi5, int4=dataclasses.replace(rpi5.int4, block_size=32))
    assert row(a, fine, "int4", 8192, None).weights_bytes == int(a.effective_parameters * 0.625)
    # the copies are the device's kernels': the A76 packs KleidiAI's layout, 1.03-1.06x the 4-bit data (measured
    # 1.05x), where an x86 host's packs 1.1-1.3x; the same profile on an x86 CPU plans the wider band
    x86 = dataclasses.replace(rpi5, device=dataclasses.replace(rpi5.device, arch="x86_64", isa=()))
    wider = row(a, x86, "int4", 8192, None)
    assert abs((wider.peak_high_bytes - r.peak_high_bytes) - packed * (0.3 - a76[1])) < 4
    assert abs((wider.peak_low_bytes - r.peak_low_bytes) - packed * (0.1 - a76[0])) < 4
    # the weights and the base are under the budget, and 8K fits beside the copies, the cache and a chunk's
    # activations, as it does on the phone, whose app's loop feeds the same rows (issue 20's first line)
    p = plan(CONFIGS / "Gemma-4-E2B.json", rpi5, ["int4"], [8192])
    assert not any("resident weights alone" in n for n in p.notes)
    assert p.max_context["int4"] >= 8192 and r.fits
    phone, _ = as_packaged(a, resolve_target("phone"))
    assert plan(CONFIGS / "Gemma-4-E2B.json", phone, ["int4"], [8192]).max_context["int4"] >= 8192
    # the E-class exporter's cache is appended to in place: one copy (an exported graph that returns the whole present
    # holds two at a step's end: runtimes/onnxruntime.py kv_copies)
    assert r.peak_high_bytes >= r.runtime_base_bytes + r.weights_bytes + r.kv_cache_bytes + r.activations_bytes
    optimum = architecture(config("Llama-3.2-1B"))
    two = row(optimum, rpi5, "int4", 8192, None)
    assert two.peak_high_bytes >= two.runtime_base_bytes + two.weights_bytes + 2 * two.kv_cache_bytes
    d = dataclasses.replace(rpi5, budget=dataclasses.replace(rpi5.budget, memory_bytes=r.weights_bytes))
    assert any("resident weights alone" in n and "no context fits" in n
               for n in plan(CONFIGS / "Gemma-4-E2B.json", d, ["int4"], [8192]).notes)


def test_e4b_fits_the_orin_nano_on_its_cpu_cores_not_beside_the_cuda_context() -> None:
    """The GPU providers' CUDA context (jetson-orin-nano's runtime.gpu_context_bytes) and E4B's 4-bit weights exceed
    3 GB before any cache; the same device on its CPU cores (jetson-orin-nano-cpu: onnxruntime's CPU provider, which
    loads no CUDA library) holds no context, and plan gives E4B a fitting int4 row there. The GPU profile's note
    names the CPU one."""
    from packager.plan_notes import cpu_only_hint

    a = architecture(config("Gemma-4-E4B"))
    gpu, cpu = resolve_target("jetson-orin-nano"), resolve_target("jetson-orin-nano-cpu")
    assert cpu.device == gpu.device and cpu.budget == gpu.budget and cpu.runtime.gpu_context_bytes == 0
    on_gpu = plan(CONFIGS / "Gemma-4-E4B.json", gpu, ["int4"], [4096])
    assert on_gpu.max_context["int4"] == 0 and not on_gpu.rows[0].fits
    assert any("no context fits" in n and "--target jetson-orin-nano-cpu" in n for n in on_gpu.notes)
    on_cpu = plan(CONFIGS / "Gemma-4-E4B.json", cpu, ["int4"], [4096])
    r = on_cpu.rows[0]
    assert r.fits and r.peak_high_bytes <= cpu.budget.memory_bytes and on_cpu.max_context["int4"] >= 4096
    assert r.runtime_base_bytes < on_gpu.rows[0].runtime_base_bytes - gpu.runtime.gpu_context_bytes // 2
    assert r.mapped_bytes >= a.mapped_parameters   # the per-layer table mapped, not resident
    assert cpu_only_hint(cpu) == "" and cpu_only_hint(resolve_target("rpi5")) == ""


def test_a_window_no_shorter_than_the_positions_is_no_window() -> None:
    """Phi-3.5-mini's config gives a sliding window of 262,144 against 131,072 positions: every layer is full."""
    d = read(config("Phi-3.5-mini"), "config.json")
    assert {la.kind for la in d.layers} == {FULL}
    assert {la.kind for la in read(small("mistral", sliding_window=256), "config.json").layers} == {SLIDING}


def test_the_phone_plans_no_ort_buffer_for_a_model_with_mapped_tables() -> None:
    """The phone's app loads an E-class model as model.onnx, its per-layer table in its own file (packager/mobile.py
    loads_onnx): plan counts no ORT-format buffer at load for E2B, as for a profile that converts nothing; and the
    rows its loop feeds are a pass's, as run.py's (packager/row_feed.py): the same row as the profile without
    [mobile]. A model without such tables still loads model.ort, read whole at load."""
    phone = resolve_target("phone")
    unconverted = dataclasses.replace(phone, mobile=None)   # the same profile, no [mobile]: no .ort
    e2b = architecture(config("Gemma-4-E2B"))
    assert row(e2b, phone, "int4", 8192, None) == row(e2b, unconverted, "int4", 8192, None)
    # an untied decoder on the phone's onnxruntime (a family genai does not build: here, the profile without its
    # [decoder_runtime]), at a short context, where the load decides the high side
    ort_phone = dataclasses.replace(phone, decoder_runtime=None)
    llama = architecture({"architectures": ["LlamaForCausalLM"], **small("llama", hidden_size=2048,
                                                                        intermediate_size=8192, vocab_size=128256)})
    no_mobile = dataclasses.replace(ort_phone, mobile=None)
    with_ort, without = (row(llama, p, "int4", 512, None) for p in (ort_phone, no_mobile))
    assert with_ort.mapped_bytes == 0
    assert with_ort.peak_high_bytes - without.peak_high_bytes > with_ort.weights_bytes / 2


def test_a_windowed_layer_stops_growing_at_its_window() -> None:
    a = architecture(config("Gemma-3-1B"))
    genai = [kv_cache(a, context, 32, windowed=True) for context in (512, 4096, 32768)]
    assert genai[0][SLIDING] == genai[1][SLIDING] == genai[2][SLIDING] > 0
    assert genai[0][FULL] < genai[1][FULL] < genai[2][FULL]
    # The exported graph on ONNX Runtime keeps a full-length cache on every layer.
    assert kv_cache(a, 4096, 32, windowed=False)[SLIDING] == 8 * genai[1][SLIDING]
    genai_row, ort_row = (row(a, resolve_target(t), "int4", 4096, None) for t in ("rpi5-genai", "rpi5"))
    assert genai_row.kv_cache_bytes < ort_row.kv_cache_bytes


def test_kv_dtype_is_the_runtimes() -> None:
    a = architecture(config("Qwen3-0.6B"))
    genai, ort = resolve_target("rpi5-genai"), resolve_target("rpi5")
    assert row(a, genai, "int4", 4096, None).kv_bits == 32 and row(a, ort, "fp16", 4096, None).kv_bits == 16
    eight = row(a, genai, "int4", 4096, 8)
    assert eight.kv_cache_bytes * 4 == row(a, genai, "int4", 4096, None).kv_cache_bytes
    assert not eight.planning_only and row(a, ort, "int4", 4096, 8).planning_only   # genai runs int8


def test_an_int8_cache_counts_the_copies_a_step_holds() -> None:
    """genai shares one buffer between past and present, for the int8 cache as for the float one (packager shares it:
    runtimes/genai.py share_quantized_cache): the run phase grows by one copy of the cache per token on the low side
    and by less than two, at a quarter of the float cache's bytes."""
    a = architecture(config("Llama-3.2-1B"))
    genai = resolve_target("rpi5-genai")
    int8 = dataclasses.replace(genai, session=dataclasses.replace(
        genai.session, config={**genai.session.config, "genai.kv_cache": "int8"}))
    grown = []
    for profile in (genai, int8):
        short, long = (row(a, profile, "int4", context, None) for context in (16384, 32768))
        kv = long.kv_cache_bytes - short.kv_cache_bytes
        assert kv > 0 and kv <= long.peak_low_bytes - short.peak_low_bytes < 2 * kv
        assert long.peak_high_bytes - short.peak_high_bytes > long.peak_low_bytes - short.peak_low_bytes
        grown.append(kv)
    assert grown[1] * 4 == grown[0]
    # --kv-bits 8 on the float profile plans what genai.kv_cache = "int8" runs, its copies included.
    what_if, runs = row(a, genai, "int4", 16384, 8), row(a, int8, "int4", 16384, None)
    assert (what_if.peak_low_bytes, what_if.peak_high_bytes) == (runs.peak_low_bytes, runs.peak_high_bytes)


@pytest.mark.parametrize("target", ["rpi5-genai", "rpi5", "jetson-orin-nano"])
def test_decoders_count_the_last_positions_logits_only(target: str) -> None:
    """onnxruntime-genai (prune_lm_head) and an exported decoder-only graph on onnxruntime (the export's
    last_position_logits) give one row of logits a pass: a prefill chunk's activations hold one row of a 262,144
    vocabulary, not the chunk's."""
    a = architecture(config("Gemma-3-1B"))   # 262,144 vocabulary
    profile = resolve_target(target)
    mem = decoder_memory(a, profile, "int4")
    assert mem.logits_positions == 1 and mem.prefill_tokens < 4096
    every = dataclasses.replace(mem, logits_positions=0)
    saved = activation_bytes(shape(a), every, 4, 4096) - activation_bytes(shape(a), mem, 4, 4096)
    assert saved == (mem.prefill_tokens - 1) * 262144 * 4
    assert row(a, profile, "int4", 4096, None).activations_bytes == activation_bytes(shape(a), mem, 4, 4096)


def test_an_encoder_decoders_decoder_keeps_every_positions_logits() -> None:
    """optimum's encoder-decoder decoders are not rewritten (the export's last_position_logits is for a decoder-only
    graph): plan counts every position of their pass."""
    a = dataclasses.replace(architecture(config("Llama-3.2-1B")), encoder_positions=1500)
    assert decoder_memory(a, resolve_target("rpi5"), "int4").logits_positions == 0


def test_largest_context_per_profile_is_monotone_in_the_budget() -> None:
    small_budget = plan(CONFIGS / "Qwen3-0.6B.json", resolve_target("rpi5-genai"), ["int4"])
    assert small_budget.max_context["int4"] > 0


@pytest.mark.parametrize(("change", "key"), [
    ({"intermediate_size": [8192] * 29}, "intermediate_size"),
    ({"intermediate_size": [8192] * 29 + ["wide"]}, "intermediate_size"),
    ({"num_hidden_layers": None}, "num_hidden_layers"),
    ({"layer_types": ["global"] * 30}, "layer_types"),
    ({"num_kv_shared_layers": 31}, "num_kv_shared_layers"),
    ({"hidden_size": "2048"}, "hidden_size"),
])
def test_a_malformed_config_gets_one_sentence_naming_the_key(tmp_path: Path, change: dict[str, Any],
                                                             key: str) -> None:
    cfg = config("Gemma-3n-E2B")
    cfg["text_config"] = {k: v for k, v in {**cfg["text_config"], **change}.items() if v is not None}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(PackagerError, match=f"key '{key}'") as e:
        plan(path, resolve_target("rpi5"))
    assert e.value.code == ExitCode.BAD_INPUT
    proc = run_cli("plan", str(path), "--target", "rpi5")
    assert proc.returncode == int(ExitCode.BAD_INPUT) and f"key '{key}'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plan_cli_prints_the_split_and_the_kv_layers() -> None:
    proc = run_cli("plan", str(CONFIGS / "Gemma-4-E2B.json"), "--target", "rpi5-genai", "--precision", "int4",
                   "--context", "8K", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["architecture"]["mapped_parameters"] == 262144 * 35 * 256
    (r,) = out["rows"]
    assert r["mapped_bytes"] > 0 and set(r["kv_by_type"]) == {FULL, SLIDING}
    text = run_cli("plan", str(CONFIGS / "Gemma-4-E2B.json"), "--target", "rpi5-genai", "--precision", "int4",
                   "--context", "8K")
    assert "effective 2.3B" in text.stderr and "share an earlier layer" in text.stderr


def test_a_class_that_needs_missing_packages_exits_7(monkeypatch: pytest.MonkeyPatch) -> None:
    transformers = pytest.importorskip("transformers")

    class NeedsTimm:
        def __init__(self, config: Any) -> None:
            raise ImportError("NeedsTimmForCausalLM requires the timm library but it was not found.")

    monkeypatch.setattr(transformers, "NeedsTimmForCausalLM", NeedsTimm, raising=False)
    cfg = {"architectures": ["NeedsTimmForCausalLM"], "model_type": "llama", "hidden_size": 64,
           "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100, "intermediate_size": 128}
    with pytest.raises(PackagerError, match="timm") as e:
        architecture({**cfg, "text_config": {"model_type": "llama"}})   # not a family plan counts: meta device
    assert e.value.code == ExitCode.MISSING_DEPENDENCY
