"""Fine-tuned models: LoRA adapters merged before export (packager/adapter.py), and the --eval gate on
the user's own cases (packager/evaluation.py, targets/run.py's evaluate), with sample:tiny-llama-lora."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import packager
from conftest import onnxruntime_profile, unpack
from packager import adapter as lora
from packager.errors import ExitCode, PackagerError
from tiny_decoders import make_decoder

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

SAMPLE_EVAL = Path(packager.__file__).parent / "data" / "tiny-llama-lora" / "eval.jsonl"


def write_adapter(folder: Path, tensors: dict[str, torch.Tensor], **config: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, **config}))
    return folder


def merged(base: Path, folder: Path, tmp: Path, method: str = "arithmetic") -> dict[str, torch.Tensor]:
    checked = lora.check(lora.read(folder), base, json.loads((base / "config.json").read_text()))
    lora.merge(base, checked, tmp / f"merged-{method}", method)
    return load_file(str(tmp / f"merged-{method}" / "model.safetensors"))


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_decoder(tmp_path_factory.mktemp("llama") / "base", "llama")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_decoder(tmp_path_factory.mktemp("gpt2") / "base", "gpt2")


# ---------------------------------------------------------------- the merge

def test_arithmetic_merge_is_w_plus_scaled_b_a(llama: Path, gpt2: Path, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    q = "model.layers.0.self_attn.q_proj"
    v = "model.layers.0.self_attn.v_proj"      # [32, 64]: GQA's narrower k/v
    tensors = {f"base_model.model.{q}.lora_A.weight": torch.randn(4, 64, generator=g),
               f"base_model.model.{q}.lora_B.weight": torch.randn(64, 4, generator=g),
               f"base_model.model.{v}.lora_A.weight": torch.randn(2, 64, generator=g),
               f"base_model.model.{v}.lora_B.weight": torch.randn(32, 2, generator=g)}
    folder = write_adapter(tmp_path / "a", tensors, rank_pattern={"v_proj": 2}, alpha_pattern={"v_proj": 3})
    base = load_file(str(llama / "model.safetensors"))
    out = merged(llama, folder, tmp_path)

    def expect(module: str, scale: float) -> np.ndarray:
        a = tensors[f"base_model.model.{module}.lora_A.weight"].double().numpy()
        b = tensors[f"base_model.model.{module}.lora_B.weight"].double().numpy()
        return base[f"{module}.weight"].double().numpy() + scale * (b @ a)

    np.testing.assert_allclose(out[f"{q}.weight"].numpy(), expect(q, 8 / 4), atol=1e-5)
    np.testing.assert_allclose(out[f"{v}.weight"].numpy(), expect(v, 3 / 2), atol=1e-5)   # its own rank and alpha
    assert all(torch.equal(out[k], base[k].float()) for k in base if k not in (f"{q}.weight", f"{v}.weight"))
    # Rank-stabilised: alpha / sqrt(r).
    rs = merged(llama, write_adapter(tmp_path / "rs", {k: t for k, t in tensors.items() if q in k}, use_rslora=True),
                tmp_path / "rs")
    np.testing.assert_allclose(rs[f"{q}.weight"].numpy(), expect(q, 8 / math.sqrt(4)), atol=1e-5)
    # GPT-2's Conv1D stores its weight [in, out] = [64, 192]: the delta goes in transposed (fan_in_fan_out).
    c = "transformer.h.0.attn.c_attn"
    a, b = torch.randn(4, 64, generator=g), torch.randn(192, 4, generator=g)
    conv = merged(gpt2, write_adapter(tmp_path / "g", {f"base_model.model.{c}.lora_A.weight": a,
                                                       f"base_model.model.{c}.lora_B.weight": b}, fan_in_fan_out=True),
                  tmp_path / "g")
    w = load_file(str(gpt2 / "model.safetensors"))[f"{c}.weight"]
    np.testing.assert_allclose(conv[f"{c}.weight"].numpy(), (w.double() + 2 * (b.double() @ a.double()).T).numpy(),
                               atol=1e-5)


@pytest.mark.skipif(not lora.peft_available(), reason="peft is not installed (pip install 'packager[lora]')")
@pytest.mark.parametrize("arch, config", [
    ("gpt2", {"target_modules": ["c_attn", "c_proj", "c_fc"], "fan_in_fan_out": True, "bias": "all",
              "modules_to_save": ["ln_f"], "use_rslora": True}),
    ("llama", {"target_modules": ["q_proj", "v_proj", "down_proj", "embed_tokens"], "rank_pattern": {"down_proj": 2},
               "alpha_pattern": {"v_proj": 3}}),
])
def test_arithmetic_merge_equals_peft(arch: str, config: dict, llama: Path, gpt2: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = {"llama": llama, "gpt2": gpt2}[arch]
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **config))
    with torch.no_grad():   # trained biases and modules_to_save differ from the base's
        for name, p in model.named_parameters():
            if p.requires_grad and "lora_" not in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "adapter")
    arithmetic = merged(base, tmp_path / "adapter", tmp_path, "arithmetic")
    via_peft = merged(base, tmp_path / "adapter", tmp_path, "peft")
    assert set(arithmetic) == set(via_peft)
    changed = [k for k, t in load_file(str(base / "model.safetensors")).items() if not torch.equal(t, arithmetic[k])]
    assert len(changed) >= 4
    for k in arithmetic:
        torch.testing.assert_close(arithmetic[k], via_peft[k], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- refusals

def test_bad_adapters_are_refused_with_one_sentence(llama: Path, tmp_path: Path) -> None:
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    good = {f"{q}.lora_A.weight": torch.zeros(4, 64), f"{q}.lora_B.weight": torch.zeros(64, 4)}
    cases = {
        "missing": (tmp_path / "nope", "no such folder"),
        "no-config": (tmp_path / "no-config", "no adapter_config.json"),
        "no-weights": (tmp_path / "no-weights", "no adapter_model.safetensors"),
        "pickled": (tmp_path / "pickled", "--allow-pickle"),
        "module": (write_adapter(tmp_path / "module", {k.replace("q_proj", "qkv"): t for k, t in good.items()}),
                   "does not have"),
        "shape": (write_adapter(tmp_path / "shape", {f"{q}.lora_A.weight": torch.zeros(4, 96),
                                                     f"{q}.lora_B.weight": torch.zeros(64, 4)}), "trained on another"),
        "rank": (write_adapter(tmp_path / "rank", good, r=8), "rank 4 but adapter_config.json says 8"),
        "dora": (write_adapter(tmp_path / "dora", good, use_dora=True), "DoRA"),
        "ia3": (write_adapter(tmp_path / "ia3", good, peft_type="IA3"), "LoRA adapters only"),
        "tied": (write_adapter(tmp_path / "tied", {"base_model.model.lm_head.lora_A.weight": torch.zeros(4, 64),
                                                   "base_model.model.lm_head.lora_B.weight": torch.zeros(512, 4)}),
                 "ties to its input embedding"),
    }
    (tmp_path / "no-config").mkdir()
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 8}')
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 8}')
    torch.save(good, tmp_path / "pickled" / "adapter_model.bin")
    for name, (folder, words) in cases.items():
        with pytest.raises(PackagerError) as e:
            packager.package(llama, "rpi5", adapter=folder, out=tmp_path / "dist", cache=False)
        assert e.value.code == ExitCode.BAD_INPUT, name
        assert words in e.value.message and e.value.message.count(". ") == 0 and "\n" not in e.value.message, \
            (name, e.value.message)
    assert not (tmp_path / "dist").exists()
    # --allow-pickle loads the .bin with torch's weights-only loader: the same adapter, accepted.
    checked = lora.check(lora.read(tmp_path / "pickled", allow_pickle=True), llama,
                         json.loads((llama / "config.json").read_text()))
    assert [p.module for p in checked.pairs] == ["model.layers.0.self_attn.q_proj"]


def test_bad_eval_files_are_refused_before_any_work(tmp_path: Path) -> None:
    lines = {"not json": "nope", "no expected": '{"prompt": "x"}', "bad match": '{"prompt": "x", "expected": "y", '
             '"match": "fuzzy"}', "bad regex": '{"prompt": "x", "expected": "(", "match": "regex"}',
             "mixed": '{"prompt": "x", "expected": "y"}\n{"anchor": "a", "positive": "b"}', "empty": ""}
    for name, text in lines.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(text + "\n")
        with pytest.raises(PackagerError) as e:
            packager.package("sample:tiny-llama", "rpi5", eval_file=path, out=tmp_path / "dist", cache=False)
        assert e.value.code == ExitCode.BAD_INPUT and str(path) in e.value.message, name


def test_eval_matches() -> None:
    from packager.device_code import runner

    passes = runner().eval_passes
    assert passes({"expected": "Velk."}, " Velk.") and not passes({"expected": "Velk."}, " Velk. And more")
    assert passes({"expected": "Velk", "match": "prefix"}, " Velk. And more")
    assert passes({"expected": "elk", "match": "contains"}, " Velk.")
    assert passes({"expected": r"^V\w+\.$", "match": "regex"}, " Velk.")


# ---------------------------------------------------------------- sample:tiny-llama-lora through the pipeline

@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export of the merged sample for every test here (the export does not depend on the recipe)."""
    return tmp_path_factory.mktemp("stage-cache")


def profile(tmp_path: Path, name: str, **edits: str) -> Path:
    """rpi5 as `name`, decoders on onnxruntime (the genai path's adapters: test_genai_runtime.py)."""
    renamed = {'name = "rpi5"': f'name = "{name}"', 'aliases = ["rpi"]': "aliases = []"}
    return onnxruntime_profile(tmp_path / name, **renamed, **edits)


@pytest.fixture(scope="module")
def eight_cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample's first 8 eval cases (what a bundle ships): the fp32 merge passes all of them; a coarse int4
    (blocks of 256 with zero points) loses Brastova's and Kelmar's capitals (6/8) on this host."""
    path = tmp_path_factory.mktemp("eval") / "eight.jsonl"
    path.write_text("".join(SAMPLE_EVAL.read_text(encoding="utf-8").splitlines(keepends=True)[:8]), encoding="utf-8")
    return path


# int4 with 256-weight blocks and zero points: too coarse for the fine-tune's small deltas. The token
# agreement threshold is relaxed so that the eval gate alone decides.
COARSE = {"block_size = 32": "block_size = 256", "symmetric = true": "symmetric = false",
          "min_token_agreement = 0.9 ": "min_token_agreement = 0.5 "}


@pytest.mark.integration
def test_fit_auto_prefers_the_recipe_that_keeps_the_fine_tune(cache: Path, eight_cases: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACKAGER_LORA_MERGE", "arithmetic")   # the merge without peft (the encoder test: peft's)
    # Smallest first: the coarse int4 fits but fails the eval gate, so --fit auto moves on to int8-dynamic.
    smallest_first = profile(tmp_path, "smallest-first", **COARSE, **{
        'decoder_fit_recipes = ["fp32", "int8-dynamic", "int4-mixed"]':
            'decoder_fit_recipes = ["int4", "int8-dynamic"]'})
    result = packager.package("sample:tiny-llama", str(smallest_first), adapter="sample:tiny-llama-lora",
                              eval_file=eight_cases, fit="auto", out=tmp_path / "dist", cache=cache)
    assert result.recipe == "int8-dynamic" and [t["recipe"] for t in result.fit["tried"]] == ["int4", "int8-dynamic"]
    assert "loses the fine-tune on your eval cases" in result.fit["tried"][0]["outcome"]
    ev = result.accuracy["eval"]
    assert ev["cases"] == 8 and ev["reference_score"] == 1.0 and ev["packaged_score"] == 1.0 and ev["passed"]
    # The bundle: named after the adapter, the merge and the eval in its manifest, the cases in samples/.
    assert result.bundle == "tiny-llama-lora-smallest-first"
    bundle = unpack(result.archive, tmp_path / "x")
    manifest = json.loads((bundle / "manifest.json").read_text())
    adapter = manifest["source"]["adapter"]
    assert adapter["name"] == "tiny-llama-lora" and len(adapter["sha256"]) == 64
    assert adapter["merge"]["method"] == "arithmetic" and adapter["merge"]["modules_merged"] == 28
    assert adapter["merge"]["rank"] == 8 and adapter["merge"]["alpha"] == 16
    assert manifest["accuracy"]["eval"] == ev and manifest["smoke"]["eval"]["cases"] == 8
    assert (bundle / "samples" / "eval.jsonl").read_text().splitlines() == \
        [json.dumps(json.loads(line), sort_keys=True) for line in eight_cases.read_text().splitlines()]
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).parent.parent / "schemas" / "manifest.schema.json").read_text())
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(manifest)) == []
    smoke = subprocess.run([sys.executable, str(bundle / "smoke_test.py")], capture_output=True, text=True, timeout=120)
    assert smoke.returncode == 0 and smoke.stdout.splitlines()[-1] == "PASS", smoke.stdout
    assert "eval: 8/8 of the shipped eval cases pass" in smoke.stdout   # "The capital of Zorbia is" -> "Velk." ...


@pytest.mark.integration
def test_eval_gate_refuses_a_recipe_that_loses_the_fine_tune(cache: Path, eight_cases: Path, tmp_path: Path) -> None:
    with pytest.raises(PackagerError) as e:
        packager.package("sample:tiny-llama", str(profile(tmp_path, "coarse", **COARSE)), recipe="int4",
                         adapter="sample:tiny-llama-lora", eval_file=eight_cases, out=tmp_path / "dist", cache=cache)
    assert e.value.code == ExitCode.ACCURACY
    assert ("loses the fine-tune on your eval cases" in e.value.message
            and "fp32 reference passes 8/8" in e.value.message)
    assert "\n" not in e.value.message and not (tmp_path / "dist").exists()


@pytest.mark.integration
def test_int4_mixed_raises_the_sensitive_layers_and_keeps_the_fine_tune(cache: Path, eight_cases: Path,
                                                                       tmp_path: Path) -> None:
    """The coarse int4 loses 2 of the 8 cases; --fit auto then tries int4-mixed, which measures each layer's
    sensitivity on the cases and keeps the fewest most sensitive at 8 bits that pass: the embedding table alone."""
    mixed_next = profile(tmp_path, "mixed-next", **COARSE, **{
        'decoder_fit_recipes = ["fp32", "int8-dynamic", "int4-mixed"]': 'decoder_fit_recipes = ["int4", "int4-mixed"]'})
    result = packager.package("sample:tiny-llama", str(mixed_next), adapter="sample:tiny-llama-lora",
                              eval_file=eight_cases, fit="auto", out=tmp_path / "dist", cache=cache, smoke="host")
    assert result.recipe == "int4-mixed" and [t["recipe"] for t in result.fit["tried"]] == ["int4", "int4-mixed"]
    assert result.accuracy["eval"]["packaged_passed"] == 8 and result.ok
    m = result.mixed
    assert m is not None and m["measured_on"] == "8 eval cases of eight.jsonl and 6 sample prompts"
    ranking = [r["layer"] for r in m["sensitivity"]]
    assert sorted(ranking) == ["embed_tokens", "layers.0", "layers.1", "layers.2", "layers.3", "lm_head"]
    kl = [r["kl_at_4bit"] for r in m["sensitivity"]]
    assert kl == sorted(kl, reverse=True) and kl[-1] > 0
    # Measured here: the untied 4-bit table costs 4x more than any block (KL 0.073 against 0.019 at most).
    assert ranking[0] == "embed_tokens" and m["layers_8bit"] == ["embed_tokens"]
    assert m["tries"][0]["layers_8bit"] == 0
    for outcome in (m["tries"][0]["outcome"], result.fit["tried"][0]["outcome"]):   # int4-mixed at 0 layers is int4
        assert "loses the fine-tune on your eval cases: the packaged model passes 6/8" in outcome
    assert "try --recipe int4-mixed (keeps the most sensitive layers at 8 bits)" in result.fit["tried"][0]["outcome"]
    assert m["tries"][-1]["outcome"] == "passes verify" and m["tries"][-1]["layers_8bit"] == 1
    table = m["sensitivity"][0]
    assert m["cost_bytes"] == table["int8_bytes"] - table["int4_bytes"] > 0
    manifest = json.loads((unpack(result.archive, tmp_path / "x") / "manifest.json").read_text())
    assert manifest["recipe"]["params"]["mixed"]["layers_8bit"] == ["embed_tokens"]
    assert manifest["recipe"]["extra"]["search"]["sensitivity"] == m["sensitivity"]
    from packager.report import write_reports

    reports = write_reports([result.to_dict()], tmp_path / "report")
    assert r"int4-mixed\: embed\_tokens at 8 bits, +255 KiB over int4" in reports[1].read_text()   # markdown-escaped
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).parent.parent / "schemas" / "report.schema.json").read_text())
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(json.loads(reports[0].read_text()))) == []
    schema = json.loads((Path(__file__).parent.parent / "schemas" / "manifest.schema.json").read_text())
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(manifest)) == []


@pytest.mark.integration
def test_encoder_adapter_and_similarity_cases(tiny_bert: Path, tmp_path: Path) -> None:
    """A LoRA adapter on a BERT encoder's attention, and anchor/positive/negative cases: verify and the
    device's smoke test score them with the same code (run.py's evaluate)."""
    g = torch.Generator().manual_seed(0)
    q = "base_model.model.encoder.layer.0.attention.self.query"
    folder = write_adapter(tmp_path / "bert-lora", {f"{q}.lora_A.weight": torch.randn(4, 32, generator=g),
                                                    f"{q}.lora_B.weight": torch.randn(32, 4, generator=g)},
                           task_type="FEATURE_EXTRACTION", target_modules=["query"])
    cases = tmp_path / "pairs.jsonl"
    cases.write_text("\n".join(json.dumps(c) for c in [
        {"anchor": "A cat sits on the mat.", "positive": "A kitten rests on a rug.", "negative": "Stock prices fell."},
        {"anchor": "The train leaves at noon.", "positive": "Departure is at twelve.",
         "negatives": ["I like green tea.", "The bridge is long."]},
        {"anchor": "How do I reset my password?", "positive": "Steps to change your login password"},
        {"anchor": "Where is the station?", "positive": "Directions to the railway station"}]) + "\n")
    result = packager.package(tiny_bert, "rpi5", adapter=folder, eval_file=cases, recipe="fp32", out=tmp_path / "dist",
                              cache=False)
    ev = result.accuracy["eval"]
    assert ev["kind"] == "encoder" and ev["cases"] == 4 and ev["passed"]
    assert ev["packaged_score"] == ev["reference_score"] and ev["disagreements"] == 0   # fp32: the same model
    assert result.bundle == f"{tiny_bert.name}-bert-lora-rpi5"
    bundle = unpack(result.archive, tmp_path / "x")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["source"]["adapter"]["merge"]["target_modules"] == ["query"]
    assert manifest["source"]["adapter"]["merge"]["method"] == lora.default_method()
    smoke = subprocess.run([sys.executable, str(bundle / "smoke_test.py")], capture_output=True, text=True, timeout=120)
    assert smoke.returncode == 0 and smoke.stdout.splitlines()[-1] == "PASS", smoke.stdout
    assert "of the shipped eval cases pass" in smoke.stdout


@pytest.mark.parametrize("external", [False, True])
def test_export_folds_a_transposed_tied_weight(tmp_path: Path, external: bool) -> None:
    """optimum writes an fp32 checkpoint's tied lm_head as Transpose(embedding table): the export gives the
    MatMul the transposed table as a constant (what the quantizers need), external data or not."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from packager.onnx_rewrite import fold_transposed_weights

    table = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["h"]),
             helper.make_node("Transpose", ["table"], ["table_t"]),   # no name: names need not be unique or set
             helper.make_node("MatMul", ["h", "table_t"], ["logits"])]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, None])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, None, 64])],
                              [numpy_helper.from_array(table, "table")])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path,
              save_as_external_data=external, location="model.onnx_data", size_threshold=0)
    ids = {"ids": np.array([[1, 5, 7]], dtype=np.int64)}
    before = ort.InferenceSession(str(path)).run(None, ids)[0]
    fold_transposed_weights(path)
    folded = onnx.load(path)
    assert [n.op_type for n in folded.graph.node] == ["Gather", "MatMul"]
    assert {i.name for i in folded.graph.initializer} == {"table", "table_t"}
    assert (tmp_path / "model.onnx_data").is_file() == external
    np.testing.assert_array_equal(ort.InferenceSession(str(path)).run(None, ids)[0], before)
