"""onnxruntime-genai as the device runtime (issue 19): a decoder LLM packaged for the phone (its [decoder_runtime], as
rpi4's and rpi5's) is built by genai's model builder, verified against the fp32 reference, measured, and its bundle
runs, checks itself, pins the runtime and carries the app examples on the GenAI API. Needs packager's `genai` exporter
environment (`packager env create genai`), which has the runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import reseal, unpack
from packager.errors import ExitCode
from packager.exporter_envs import GENAI, is_ready

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not is_ready(GENAI), reason="needs `packager env create genai`")]

TARGET = "rpi5-genai"
# The bundle's target: the phone's genai bundle is rpi5's (the same runtime and settings) and the app examples besides,
# so one package run covers both.
BUNDLE_TARGET = "phone"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def packager(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "packager", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=900)


def device(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A bundle's script, run with the runtime it pins (the genai environment has onnxruntime-genai 0.18.0)."""
    return subprocess.run([str(GENAI.python), *args], capture_output=True, text=True, cwd=folder, timeout=600)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("genai")
    proc = packager("package", "sample:tiny-llama", "--target", BUNDLE_TARGET, "--out", str(out / "dist"),
                    "--no-cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return unpack(next((out / "dist").glob("*.tar.gz")), out / "unpacked")


def test_bundle_pins_genai_and_records_the_runtime(bundle: Path) -> None:
    requirements = (bundle / "requirements.txt").read_text().splitlines()
    assert "onnxruntime-genai==0.18.0" in requirements
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["runtime"]["package"] == "onnxruntime-genai"
    assert (bundle / "model" / "genai_config.json").is_file()
    assert manifest["accuracy"]["metric"] == "token agreement"
    assert manifest["accuracy"]["token_agreement"] >= manifest["accuracy"]["threshold"]["token_agreement"]
    config = json.loads((bundle / "model" / "genai_config.json").read_text())
    # the profile's [decoder_runtime.session] cpu_mem_arena: on where MatMulNBits runs at level 4 (the phone's)
    assert config["model"]["decoder"]["session_options"]["enable_cpu_mem_arena"] is True


def io_of_graph_and_manifest(bundle: Path) -> tuple[dict, tuple[list, list]]:
    """The manifest's runtime.io, and the packaged graph's own inputs and outputs (name, dtype, shape)."""
    from packager.model_files import signature

    manifest = json.loads((bundle / "manifest.json").read_text())
    return manifest["runtime"]["io"], signature(bundle / manifest["runtime"]["model"])


def test_the_manifest_describes_the_builders_graph_and_its_16_bit_cache(bundle: Path) -> None:
    # the phone's genai bundle keeps a 16-bit cache (genai.kv_cache); runtime.io is the graph that ships (no
    # position_ids, the last position's logits), not the fp32 export's
    io, (inputs, outputs) = io_of_graph_and_manifest(bundle)
    assert (io["inputs"], io["outputs"]) == (inputs, outputs)
    assert io["kv"] == {"layers": 4, "heads": 4, "head_dim": 32, "dtype": "float16"} and io["logits"] == "last"
    assert "position_ids" not in {i["name"] for i in inputs}


def test_phone_bundle_ships_the_builders_folder_and_genai_app_examples(bundle: Path) -> None:
    """The phone's genai bundle: the builder's folder as it is (no model.ort, no ORT-format buffer in the estimate),
    the app packages with the GenAI API, and examples that size the cache to the bundle's context and append the
    prompt in the profile's chunks."""
    import jsonschema

    manifest = json.loads((bundle / "manifest.json").read_text())
    schema = json.loads((Path(__file__).resolve().parents[1] / "schemas" / "manifest.schema.json").read_text())
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(manifest))
    assert not list(bundle.rglob("*.ort")) and manifest["runtime"]["model"] == "model/model.onnx"
    assert "ort_format_buffer" not in manifest["memory"]["estimate"]["breakdown"]
    mobile, context = manifest["mobile"], manifest["runtime"]["context"]
    chunk = manifest["runtime"]["session"]["config"]["genai.prefill_chunk"]
    assert mobile["format"] == "genai" and mobile["model_folder"] == "model"
    assert mobile["app_packages"]["android"][0] == "com.microsoft.onnxruntime:onnxruntime-genai-android:0.18.0"
    assert mobile["app_packages"]["ios"] == ["pod 'onnxruntime-genai-objc', '0.18.0'"]
    kotlin, swift = (bundle / mobile["examples"][0]).read_text(), (bundle / mobile["examples"][1]).read_text()
    for name in ("Model(", "Tokenizer(", "GeneratorParams(", "Generator(", "appendTokens", "generateNextToken",
                 "createStream()", f"CONTEXT = {context} ", f"PREFILL_CHUNK = {chunk} ", '"max_length"',
                 '"tokenizer.json" to '):
        assert name in kotlin, name
    for name in ("OGAModel(", "OGATokenizer(", "OGAGeneratorParams(", "OGAGenerator(", "appendTokens",
                 "generateNextToken", "OGATokenizerStream(", f"context = {context} ", f"prefillChunk = {chunk} ",
                 '"max_length"'):
        assert name in swift, name
    android_readme = (bundle / "android" / "README.md").read_text()
    assert all(line in android_readme for line in mobile["app_packages"]["android"])
    assert "onnxruntime-genai-objc" in (bundle / "README.md").read_text()


def test_run_prompt_and_bare_text_generate(bundle: Path) -> None:
    for args in (["--prompt", "Once upon a time", "--max-new-tokens", "8"], ["Once upon a time"]):
        proc = device(bundle, "run.py", *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip().startswith("Once upon a time")
        assert len(proc.stdout.strip()) > len("Once upon a time")


STREAM = """
import sys
import run
runner = run.load()
pieces = list(runner.stream_text("Once upon a time", 16))
text, tokens = runner.generate_text("Once upon a time", 16)
assert "".join(pieces) == text, (pieces, text)
print(len(pieces), len(tokens))
"""


def test_run_prompt_streams_the_text_as_it_is_generated(bundle: Path) -> None:
    """The runner gives the continuation in pieces, one per token that completes text, and they make up
    generate_text's text; run.py --prompt prints each as it comes (flushed: the prompt is read before the end)."""
    proc = device(bundle, "-c", STREAM)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pieces, tokens = map(int, proc.stdout.split())
    assert 1 < pieces <= tokens
    with subprocess.Popen([str(GENAI.python), "run.py", "--prompt", "Once upon a time", "--max-new-tokens", "16"],
                          cwd=bundle, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as run:
        assert run.stdout is not None
        assert run.stdout.read(len("Once upon a time")) == "Once upon a time"
        rest = run.stdout.read()
    assert run.returncode == 0 and len(rest.strip()) > 0


def test_measure_gives_the_peak(bundle: Path) -> None:
    proc = device(bundle, "run.py", "--measure")
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    assert measured["peak_bytes"] >= measured["load_peak_bytes"] > measured["baseline_bytes"] > 0


def test_smoke_test_passes_and_fails_on_tampered_expectations(bundle: Path, tmp_path: Path) -> None:
    proc = device(bundle, "smoke_test.py")
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "PASS", proc.stdout + proc.stderr
    tampered = tmp_path / "tampered"
    subprocess.run(["cp", "-r", str(bundle), str(tampered)], check=True)
    expected = tampered / "samples" / "expected.npz"
    with np.load(expected) as data:
        arrays = {k: data[k] for k in data.files}
    for key in arrays:   # every reference token moved off what the model predicts
        if key.endswith("tokens"):
            arrays[key] = (arrays[key] + 1) % 50
    np.savez(expected, **arrays)
    reseal(tampered)
    proc = device(tampered, "smoke_test.py")
    assert proc.returncode != 0 and proc.stdout.strip().splitlines()[-1].startswith("FAIL"), proc.stdout


def test_plan_and_the_bundles_estimate_count_the_same_decoder(bundle: Path) -> None:
    """The fit stage's estimate of a genai bundle applies plan's rule to the packaged graph (packager/decoder_peak.py):
    the same KV cache and activations (logits, a chunk's scratch) as plan's row for the source's config at the
    bundle's context; the peaks differ only by the weights as stored against as counted, the graph's nodes and the
    tokenizer."""
    from packager.plan import architecture, as_packaged, read_config, row
    from packager.profiles import resolve_target

    memory = json.loads((bundle / "manifest.json").read_text())["memory"]
    est, context = memory["estimate"], memory["context"]
    a = architecture(read_config("sample:tiny-llama"))
    r = row(a, as_packaged(a, resolve_target(BUNDLE_TARGET))[0], "int4", context, None)
    parts = est["breakdown"]
    assert parts["kv_cache"] == r.kv_cache_bytes > 0 and parts["activations"] == r.activations_bytes > 0
    stored = parts["weights_external"] + parts["weights_inline"]
    apart = parts["graph"] + parts["tokenizer"] + 1.8 * abs(stored - r.weights_bytes)   # 1.8: the load's most
    assert abs(est["low_bytes"] - r.peak_low_bytes) <= apart and abs(est["high_bytes"] - r.peak_high_bytes) <= apart


def test_check_gives_a_memory_verdict() -> None:
    proc = packager("check", "sample:tiny-llama", "--target", TARGET, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fits" in proc.stdout


def test_a_model_that_is_not_a_decoder_is_refused_in_one_sentence(tmp_path: Path) -> None:
    proc = packager("package", "sample:minilm", "--target", TARGET, "--out", str(tmp_path / "dist"), "--no-cache")
    assert proc.returncode == ExitCode.BAD_INPUT
    message = proc.stderr.strip().splitlines()[-1]
    # refused from its config.json, before the export: its architecture is none the builder makes
    assert "onnxruntime-genai" in message and "BertModel" in message and "rpi5" in message
    assert "export" not in proc.stderr
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())




def test_the_onnxruntime_inside_genai_is_in_the_runtime_table() -> None:
    from packager.compat import load_table
    from packager.profiles import builtin_profiles
    from packager.runtimes.genai import ONNXRUNTIME

    release = load_table().release(ONNXRUNTIME)
    assert release is not None
    assert builtin_profiles()[TARGET].runtime.max_opset <= release.opset


@pytest.mark.parametrize("kv, level", [("int8", 4), ("float16", 0)])   # each: a KV cache type and a compute
def test_the_kv_cache_type_and_the_matmul_compute_are_profile_settings(tmp_path: Path, kv: str, level: int) -> None:
    """genai.kv_cache = "int8" (here by --kv-bits 8, which sets it): the builder's quantized cache, with scales
    measured on the fp32 reference; "float16" (here in the profile): the attention in fp16 (runtimes/genai_kv16.py).
    [int4] accuracy_level 0: MatMulNBits computing in fp32 (packed smaller than level 4's int8 compute), and the
    bundle's estimate counts the weights with that mode's factors. Each passes verify and the smoke test."""
    import onnx

    from packager.paths import profiles_dir
    from packager.runtimes.genai import WEIGHT_FACTORS

    text = (profiles_dir() / f"{TARGET}.toml").read_text()
    setting = '"genai.prefill_chunk" = "256"'
    assert setting in text and "accuracy_level = 1\n" in text
    profile = tmp_path / f"kv-{kv}-{level}.toml"
    in_profile = setting + f', "genai.kv_cache" = "{kv}"' if kv != "int8" else setting
    profile.write_text(text.replace(setting, in_profile).replace(f'name = "{TARGET}"', f'name = "kv-{kv}-{level}"')
                       .replace("accuracy_level = 1\n", f"accuracy_level = {level}\n"))
    option = ("--kv-bits", "8") if kv == "int8" else ()
    proc = packager("package", "sample:tiny-llama", "--target", str(profile), "--out", str(tmp_path / "dist"),
                    "--no-cache", *option)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = unpack(next((tmp_path / "dist").glob("*.tar.gz")), tmp_path / "unpacked")
    graph = onnx.load(str(folder / "model" / "model.onnx"), load_external_data=False).graph
    past = [i for i in graph.input if i.name.startswith("past_key_values.")]
    elem = {"int8": onnx.TensorProto.INT8, "float16": onnx.TensorProto.FLOAT16, "float": onnx.TensorProto.FLOAT}[kv]
    assert past and all(i.type.tensor_type.elem_type == elem for i in past)
    levels = {next((a.i for a in n.attribute if a.name == "accuracy_level"), 0)   # 0: the attribute's default
              for n in graph.node if n.op_type == "MatMulNBits"}
    assert levels == {level}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["recipe"]["params"]["kv_cache"] == kv
    assert manifest["profile"]["session"]["config"]["genai.kv_cache"] == kv
    (load_low, load_high), (run_low, run_high) = WEIGHT_FACTORS["fp32" if level == 0 else "int8"][32]
    assert f"{load_low:g}-{load_high:g}x the stored bytes at load, {run_low:g}-{run_high:g}x once loaded" in "\n".join(
        manifest["memory"]["estimate"]["notes"])
    proc = device(folder, "smoke_test.py")
    assert proc.stdout.strip().splitlines()[-1] == "PASS", proc.stdout + proc.stderr


def test_the_matmul_compute_sets_plans_weight_factors() -> None:
    """plan counts a decoder's int4 weights by the profile's MatMulNBits compute ([int4] accuracy_level): fp32 compute
    (levels 0-2, the profile's) packs smaller than int8 compute (level 4), so its peak is lower at every context;
    other precisions keep int8 compute's factors."""
    import dataclasses

    from packager.plan import architecture, read_config, row
    from packager.profile_types import Profile
    from packager.profiles import resolve_target

    a = architecture(read_config("sample:tiny-llama"))
    fp32 = resolve_target(TARGET)
    assert fp32.int4.accuracy_level <= 2
    int8 = dataclasses.replace(fp32, int4=dataclasses.replace(fp32.int4, accuracy_level=4))

    def high(profile: Profile, precision: str, context: int) -> int:
        return row(a, profile, precision, context, None).peak_high_bytes

    for context in (256, 1024):
        assert high(fp32, "int4", context) < high(int8, "int4", context)
        assert high(fp32, "fp32", context) == high(int8, "fp32", context)


def test_rpi5_decoders_take_block_128_on_either_runtime_and_other_models_keep_block_32() -> None:
    """rpi5's [decoder_int4] (int8 MatMulNBits compute at block 128: the packed copy small enough to fit, docs/llms.md)
    is what a decoder gets, whichever runtime runs it (genai's builder, or the onnxruntime path's int4 recipe: GPT-2,
    the E-class models); [int4] (block 32) stays the other models'. plan counts each block size's measured factors."""
    import dataclasses

    from packager.plan import architecture, read_config, row
    from packager.profiles import resolve_target
    from packager.runtimes import profile_for_model
    from packager.runtimes.genai import WEIGHT_FACTORS, weight_factors

    rpi5 = resolve_target("rpi5")
    genai, _ = profile_for_model(rpi5, "decoder", "LlamaForCausalLM")
    assert genai.runtime.package == "onnxruntime-genai"
    assert (genai.int4.accuracy_level, genai.int4.block_size) == (4, 128)
    assert weight_factors(genai, "int4-mixed") == WEIGHT_FACTORS["int8"][128]
    assert weight_factors(genai, "fp32") == WEIGHT_FACTORS["int8"][32]   # not int4: as before the block was a choice
    kept, _ = profile_for_model(rpi5, "decoder", "GPT2LMHeadModel")
    assert kept.runtime.package == "onnxruntime" and kept.int4 == genai.int4
    assert profile_for_model(rpi5, "text", "BertModel")[0].int4.block_size == 32
    assert resolve_target(TARGET).int4.accuracy_level == 1
    # at block 128, level 4's copy is small enough that it holds less than block 32 at level 1 did (the 1B shape)
    a = architecture(read_config(str(Path(__file__).resolve().parents[1] / "packager/data/configs/Llama-3.2-1B.json")))
    before = dataclasses.replace(genai, int4=dataclasses.replace(genai.int4, accuracy_level=1, block_size=32))
    assert row(a, genai, "int4", 4096, None).peak_high_bytes < row(a, before, "int4", 4096, None).peak_high_bytes


# rpi5 itself: decoder LLMs go to onnxruntime-genai by default ([decoder_runtime]), with int4-mixed, --adapter,
# --eval and --fit auto on that path.

@pytest.fixture(scope="module")
def fine_tune(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The README's fine-tune example, as it is written (no --fit auto), for rpi5."""
    out = tmp_path_factory.mktemp("fine-tune")
    proc = packager("package", "sample:tiny-llama", "--adapter", "sample:tiny-llama-lora", "--eval",
                    "sample:tiny-llama-lora", "--target", "rpi5", "--out", str(out / "dist"), "--no-cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, unpack(next((out / "dist").glob("*.tar.gz")), out / "unpacked")


def test_readme_fine_tune_example_packages_on_genai_with_int4_mixed(fine_tune: tuple) -> None:
    _, bundle = fine_tune
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["runtime"]["package"] == "onnxruntime-genai"
    assert "onnxruntime-genai==0.18.0" in (bundle / "requirements.txt").read_text().splitlines()
    assert (bundle / "model" / "genai_config.json").is_file()
    recipe = manifest["recipe"]
    assert recipe["name"] == "int4-mixed" and recipe["params"]["builder"] == "onnxruntime_genai.models.builder"
    mixed = recipe["params"]["mixed"]
    # Whatever layers the search kept at 8 bits, the builder made those and only those at 8 bits.
    import onnx

    graph = onnx.load(str(bundle / "model" / "model.onnx"), load_external_data=False).graph
    eight = {n.name for n in graph.node if n.op_type == "MatMulNBits"
             and next(a.i for a in n.attribute if a.name == "bits") == 8}
    assert {n.removesuffix("_Q8").removesuffix("_Q4") for n in eight} == \
        {n.removesuffix("/MatMul") + "/MatMul" for n in mixed["nodes_8bit"]}
    assert bool(mixed["layers_8bit"]) == bool(eight)
    # rpi5's genai default: MatMulNBits computing in int8 at block 128 ([decoder_int4]), 8-bit layers too
    assert {(attr(n, "accuracy_level"), attr(n, "block_size")) for n in graph.node if n.op_type == "MatMulNBits"
            and attr(n, "bits") == 4} == {(4, 128)}
    assert {attr(n, "accuracy_level") for n in graph.node if n.op_type == "MatMulNBits"} == {4}
    assert (manifest["profile"]["int4"]["accuracy_level"], manifest["profile"]["int4"]["block_size"]) == (4, 128)
    # The adapter was merged before the builder ran, and the eval gate judged the genai model.
    assert manifest["source"]["adapter"]["name"] == "tiny-llama-lora"
    ev = manifest["accuracy"]["eval"]
    assert ev["passed"] and ev["packaged_score"] >= ev["reference_score"] - 0.05
    assert manifest["accuracy"]["token_agreement"] >= manifest["accuracy"]["threshold"]["token_agreement"]
    # rpi5's 16-bit cache (genai.kv_cache = "float16"): the manifest says so, as the graph declares it
    io, (inputs, outputs) = io_of_graph_and_manifest(bundle)
    assert (io["inputs"], io["outputs"]) == (inputs, outputs) and io["kv"]["dtype"] == "float16"
    assert {i["dtype"] for i in inputs if i["name"].startswith("past_key_values.")} == {"float16"}


def test_fine_tune_bundle_runs_its_eval_cases_in_the_smoke_test(fine_tune: tuple) -> None:
    _, bundle = fine_tune
    assert (bundle / "samples" / "eval.jsonl").is_file()
    proc = device(bundle, "smoke_test.py")
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "PASS", proc.stdout + proc.stderr
    assert "of the shipped eval cases pass" in proc.stdout
    proc = device(bundle, "run.py", "--prompt", "The capital of Zorbia is", "--max-new-tokens", "8")
    assert proc.returncode == 0 and proc.stdout.startswith("The capital of Zorbia is"), proc.stderr[-2000:]


def test_fit_auto_on_genai_moves_to_int4_mixed_when_fp32_is_over_budget(tmp_path: Path) -> None:
    """--fit auto on the genai path: the budget between the fp32 and int4 builds' measured peaks (check --json)
    rejects fp32 for its memory and chooses int4-mixed."""
    peaks = {}
    for recipe in ("fp32", "int4"):
        proc = packager("check", "sample:tiny-llama", "--target", "rpi5", "--recipe", recipe, "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks[recipe] = json.loads(proc.stdout)["measured"]["peak_bytes"]
    assert peaks["int4"] < peaks["fp32"]
    budget = (peaks["int4"] + peaks["fp32"]) // 2
    proc = packager("package", "sample:tiny-llama", "--target", "rpi5", "--fit", "auto", "--budget", str(budget),
                    "--out", str(tmp_path / "dist"), "--no-cache", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["recipe"] == "int4-mixed"
    assert [t["recipe"] for t in result["fit"]["tried"]] == ["fp32", "int4-mixed"]
    assert "budget" in result["fit"]["tried"][0]["outcome"] or "MiB" in result["fit"]["tried"][0]["outcome"]
    manifest = json.loads((unpack(next((tmp_path / "dist").glob("*.tar.gz")), tmp_path / "x") / "manifest.json")
                          .read_text())
    assert manifest["runtime"]["package"] == "onnxruntime-genai"


def attr(node: object, name: str) -> int:
    """A MatMulNBits attribute's value (0 where the node leaves it to its default)."""
    return next((a.i for a in node.attribute if a.name == name), 0)   # type: ignore[attr-defined]


def test_a_decoder_the_builder_does_not_make_keeps_onnxruntime_with_a_note(tmp_path: Path) -> None:
    from tiny_decoders import make_decoder

    folder = make_decoder(tmp_path / "gpt2", "gpt2")
    proc = packager("package", str(folder), "--target", "rpi5", "--out", str(tmp_path / "dist"), "--no-cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GPT2LMHeadModel is not an architecture onnxruntime-genai" in proc.stderr
    manifest = json.loads((unpack(next((tmp_path / "dist").glob("*.tar.gz")), tmp_path / "x") / "manifest.json")
                          .read_text())
    assert manifest["runtime"]["package"] == "onnxruntime" and manifest["recipe"]["name"] == "int4"
    # [decoder_int4]: a decoder takes block 128 on rpi5 whatever runtime runs it (encoders keep [int4]'s block 32)
    assert (manifest["profile"]["int4"]["accuracy_level"], manifest["profile"]["int4"]["block_size"]) == (4, 128)


def test_fit_auto_on_genai_takes_the_int8_kv_cache_then_a_shorter_context(tmp_path: Path) -> None:
    """--fit auto's last two levers on the genai path, in order: a budget between the int8 cache's measured peaks at
    8192 and at 4096 tokens of context (fp32 build; 2 layers x 16 heads x 16 a token) rejects the profile's float
    cache at 8192, then the int8 cache at 8192 (the runtime's smallest: runtimes/genai.py KV_COPIES), and gives the
    int8 cache at 4096; the bundle and its manifest say so (test_fit_kv_lever.py: the search's order on a table)."""
    import onnx

    from tiny_decoders import make_decoder

    folder = make_decoder(tmp_path / "long", "llama", hidden_size=256, num_hidden_layers=2, num_attention_heads=16,
                          num_key_value_heads=16, max_position_embeddings=8192)
    peaks = {}
    for context in ("8192", "4096"):
        proc = packager("check", str(folder), "--target", str(_long_context_profile(tmp_path, "int8")), "--recipe",
                        "fp32", "--context", context, "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks[context] = json.loads(proc.stdout)["measured"]["peak_bytes"]
    assert peaks["4096"] < peaks["8192"]
    budget = (peaks["4096"] + peaks["8192"]) // 2
    proc = packager("package", str(folder), "--target", str(_long_context_profile(tmp_path, "float")), "--fit",
                    "auto", "--context", "8192", "--budget", str(budget), "--out", str(tmp_path / "dist"), "--no-cache",
                    "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    fit = json.loads(proc.stdout)["fit"]
    assert (fit["chosen"], fit["context"], fit["kv_cache"]) == ("fp32", 4096, "int8")
    assert [(t["recipe"], t["context"], t.get("kv_cache")) for t in fit["tried"]] == [
        ("fp32", 8192, None), ("fp32", 8192, "int8"), ("fp32", 4096, "int8")]
    # --json: the summary's words are in the result
    assert "nor with the runtime's smallest KV cache" in fit["why"] and "with an int8 KV cache" in fit["why"]
    bundle = unpack(next((tmp_path / "dist").glob("*.tar.gz")), tmp_path / "x")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["runtime"]["package"] == "onnxruntime-genai" and manifest["runtime"]["context"] == 4096
    assert manifest["recipe"]["fit"]["kv_cache"] == "int8" and manifest["recipe"]["params"]["kv_cache"] == "int8"
    assert manifest["profile"]["session"]["config"]["genai.kv_cache"] == "int8"
    assert manifest["memory"]["fits"] is True
    graph = onnx.load(str(bundle / "model" / "model.onnx"), load_external_data=False).graph
    assert {i.type.tensor_type.elem_type for i in graph.input if i.name.startswith("past_key_values.")} == \
        {onnx.TensorProto.INT8}


def test_the_genai_path_exports_no_fp32_reference_until_int4_mixeds_search_needs_one(tmp_path: Path) -> None:
    """The builder makes the model and verify runs PyTorch, so the export stage makes no ONNX export on this path;
    int4-mixed's layer search (when int4 alone is rejected) makes it then, described apart from the bundle's io."""
    from packager.context import Context
    from packager.profiles import resolve_target
    from packager.stage_runner import STAGES, fp32_reference

    ctx = Context("sample:tiny-llama", resolve_target("rpi5"), "int4-mixed", tmp_path, tmp_path / "out",
                  recipe_explicit=False)
    for name in ("source", "export"):
        dict(STAGES)[name](ctx)
    assert ctx.profile.runtime.name == "onnxruntime-genai" and ctx.reference_model is None
    assert not (tmp_path / "reference").exists() and ctx.context == 512
    assert (ctx.io.kind, ctx.io.inputs, ctx.io.kv, ctx.io.eos_token_ids) == ("decoder", [], None, [2])
    reference = fp32_reference(ctx)
    assert reference == tmp_path / "reference" / "model.onnx" and reference.is_file()
    assert ctx.reference_io is not None and ctx.reference_io.kv is not None
    assert ctx.reference_io.kv["dtype"] == "float32" and "position_ids" in {i["name"] for i in ctx.reference_io.inputs}
    assert ctx.io.inputs == []   # the bundle's io stays the builder's to describe


def _long_context_profile(tmp_path: Path, kv: str) -> Path:
    """rpi5 with --fit auto trying fp32 alone (one recipe keeps the test short), with the KV cache `kv`."""
    text = (Path(__file__).resolve().parents[1] / "profiles" / "rpi5.toml").read_text()
    both, cache = 'fit_recipes = ["fp32", "int4-mixed"]', '"genai.kv_cache" = "float16"'
    assert both in text and cache in text
    profile = tmp_path / f"rpi5-{kv}.toml"
    profile.write_text(text.replace(both, 'fit_recipes = ["fp32"]').replace(cache, f'"genai.kv_cache" = "{kv}"'))
    return profile


def test_check_of_the_bundle_judges_it_as_built(bundle: Path) -> None:
    # the bundle's own run.py measures it; its graph is the builder's, which the exported-graph path cannot run
    proc = packager("check", str(bundle), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["target"] == BUNDLE_TARGET and result["fits"] and result["verdict_basis"] == "measured"
    assert result["measured"]["peak_bytes"] > 0 and result["estimate"]["high_bytes"] > 0
    proc = packager("check", str(bundle), "--context", "64")
    assert proc.returncode == ExitCode.USAGE and "--context" in proc.stderr
    proc = packager("check", str(bundle), "--target", "jetson-orin-nano", "--no-measure")
    assert proc.returncode == ExitCode.USAGE and "onnxruntime-genai" in proc.stderr
