"""E-class decoders (issue 20): a tiny Gemma 4 with per-layer embeddings (PLE), KV sharing and sliding layers,
exported by packager's own exporter in the `genai` environment (transformers 5.x). What packager guarantees: the
io run.py's Decoder runs, a cache only for the layers that own one, the logits of the last position only, the
PyTorch model's greedy tokens, and the PLE table int8 in a file of its own that onnxruntime memory-maps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import onnx
import pytest

from packager import decoder_config, eclass, emulate
from packager.decoder_config import CACHED_AXIS, WINDOW_AXIS, prefill_chunk
from packager.errors import ExitCode
from packager.exporter_envs import GENAI, is_ready
from packager.recipes.prepare import hidden_weights
from packager.row_tables import fed_bytes, row_tables
from tiny_decoders import ECLASS, ECLASS_3N, make_eclass

PLE_VOCAB = 262144   # the real Gemma 4 vocabulary: the table (25 MB here) outgrows any page or folio size

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not is_ready(GENAI), reason="needs `packager env create genai`")]

# The run in the genai environment (transformers 5.x): the PyTorch model's greedy tokens and the exported graph's,
# run as run.py's Decoder runs it, with the PLE file's resident pages after the session loaded and after the run.
PARITY = r"""
import json, re, sys
import numpy as np, onnxruntime as ort, torch
from transformers import AutoModelForCausalLM
sys.path.insert(0, sys.argv[3])
from runtime.session import Decoder
io = json.loads(sys.argv[4])

def ple_rss():
    rss, current = 0, ""
    for line in open("/proc/self/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            current = line.split()[-1]
        elif line.startswith("Rss:") and current.endswith(sys.argv[5]):
            rss += int(line.split()[1]) * 1024
    return rss

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32, attn_implementation="eager").eval()
session = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
loaded = ple_rss()
mapped = any(line.rstrip().endswith(sys.argv[5]) for line in open("/proc/self/maps"))
prompt = [int(t) for t in np.random.RandomState(0).randint(2, 512, size=20)]
tokens, first = Decoder(session, io).generate(prompt, 8)
ids, ref = list(prompt), []
with torch.inference_mode():
    for _ in range(len(tokens)):
        ref.append(int(torch.argmax(model(input_ids=torch.tensor([ids])).logits[0, -1])))
        ids.append(ref[-1])
    first_ref = model(input_ids=torch.tensor([prompt])).logits[0, -1].numpy()
scores = Decoder(session, io).score(prompt[:5])
decoder = Decoder(session, io)
_, cache = decoder.step(prompt, decoder.empty_past(), 0)
# a prompt longer than a prefill chunk: the chunked pass (generate's) against one pass over the whole prompt
long = [int(t) for t in np.random.RandomState(1).randint(2, 512, size=300)]
one, one_cache = decoder.step(long, decoder.empty_past(), 0)
chunked, chunked_cache = decoder.prefill(long)
chunks = {"logits": float(np.abs(one[-1] - chunked[-1]).max()), "scale": float(np.abs(one[-1]).max()),
          "same_shapes": all(one_cache[n].shape == chunked_cache[n].shape for n in one_cache),
          "cache": max(float(np.abs(one_cache[n] - chunked_cache[n]).max()) for n in one_cache)}
print(json.dumps({"chunks": chunks, "tokens": tokens, "ref": ref, "first_diff": float(np.abs(first - first_ref).max()),
                  "first_scale": float(np.abs(first_ref).max()), "scores": list(scores.shape),
                  "loaded": loaded, "after": ple_rss(), "mapped": mapped,
                  "cache": {n: v.shape[1] for n, v in cache.items()}}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("eclass")
    # a PLE vocabulary far larger than the tokenizer's: a run reads a few of its rows, and maps only their pages
    source = make_eclass(root / "tiny-gemma4-e", GENAI.python, vocab_size_per_layer_input=PLE_VOCAB)
    made = eclass.export(source, root / "onnx", root / "work")
    return source, root / "onnx", made


def signature(model: onnx.ModelProto) -> tuple[dict, dict]:
    def dims(v: onnx.ValueInfoProto) -> list:
        return [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
    return {i.name: dims(i) for i in model.graph.input}, {o.name: dims(o) for o in model.graph.output}


def test_only_the_layers_that_own_a_cache_have_a_past_and_present(exported: tuple) -> None:
    _, out, made = exported
    inputs, outputs = signature(onnx.load(out / "model.onnx", load_external_data=False))
    shared = ECLASS["num_kv_shared_layers"]
    owners = ECLASS["num_hidden_layers"] - shared
    assert made["owners"] == list(range(owners))
    assert [n for n in inputs if n.startswith("past_key_values.")] == \
        [f"past_key_values.{n}.{kind}" for n in range(owners) for kind in ("key", "value")]
    assert [n for n in outputs if n.startswith("present.")] == \
        [f"present.{n}.{kind}" for n in range(owners) for kind in ("key", "value")]
    # the sliding and full layers keep their own head sizes
    sizes = {ECLASS["layer_types"][n]: inputs[f"past_key_values.{n}.key"][3] for n in range(owners)}
    assert sizes == {"sliding_attention": ECLASS["head_dim"], "full_attention": ECLASS["global_head_dim"]}
    # a sliding layer's past is its window's: the length axis says so (the estimate sizes it by the window); the
    # pasts are laid out positions first, and the presents are the new tokens' alone (the loop appends them)
    axes = {ECLASS["layer_types"][n]: inputs[f"past_key_values.{n}.key"][1] for n in range(owners)}
    assert axes == {"sliding_attention": WINDOW_AXIS, "full_attention": CACHED_AXIS}
    assert {tuple(outputs[f"present.{n}.{kind}"][:2]) for n in range(owners) for kind in ("key", "value")} == \
        {("batch", "sequence")}
    assert outputs["logits"][2] == ECLASS["vocab_size"]


def test_shape_inference_sizes_the_attention_so_the_estimate_follows_the_pass(exported: tuple) -> None:
    """The exporter takes the head size and head counts as numbers (ONNX shape inference carries a shape's values
    through Gather and Mul, not Div), so the attention's scores get their sizes at a step's shapes and the estimate's
    activations grow with the pass: from 1 token to 64 against 256 positions by at least two buffers of a layer's
    scores (the scores and their exponentials, held together). Before, every size after the rotary half fell back
    to its inputs': 197, 213 and 465 KiB at 1, 16 and 64 tokens here, where it is now 53, 247 and 833."""
    from packager.estimate import estimate, step_shapes
    from packager.profiles import resolve_target

    _, out, _ = exported
    io = io_of(out, ECLASS["sliding_window"])
    rpi5 = resolve_target("rpi5")
    activations = [estimate(out / "model.onnx", rpi5, "decoder", step_shapes(io, 256, n), context=256)
                   .breakdown["activations"] for n in (1, 16, 64)]
    scores = ECLASS["num_attention_heads"] * 64 * 256 * 4   # one layer's, fp32
    assert activations[0] < activations[1] < activations[2] and activations[2] - activations[0] >= 2 * scores


def test_the_ple_table_is_int8_per_row_in_its_own_page_aligned_file(exported: tuple) -> None:
    _, out, made = exported
    model = onnx.load(out / "model.onnx", load_external_data=False)
    place = {t.name: (t.data_type, {e.key: e.value for e in t.external_data}) for t in model.graph.initializer}
    rows_type, rows = place["ple_rows"]
    assert rows_type == onnx.TensorProto.INT8 and rows["location"] == made["ple_file"]
    assert int(rows["offset"]) % 4096 == 0
    width = ECLASS["num_hidden_layers"] * ECLASS["hidden_size_per_layer_input"]
    assert int(rows["length"]) == PLE_VOCAB * width
    assert place["ple_scales"][1]["location"] == made["ple_file"]
    # nothing else in that file: what is mapped there is the table
    assert {n for n, (_, e) in place.items() if e.get("location") == made["ple_file"]} == set(made["ple_tensors"])
    assert "model.onnx.data" in {e["location"] for _, e in place.values()}


def test_the_int4_recipe_quantizes_the_tied_embedding_once_and_maps_the_lookups_copy(exported: tuple,
                                                                                      tmp_path: Path) -> None:
    """The trace writes the tied lm_head as a transposed copy of the embedding; named as on optimum's path, int4
    quantizes the pair once (the lm_head's MatMulNBits weight), and the embedding's GatherBlockQuantized reads its own
    copy of it from a file of its own, which the estimate maps (mapped_tables) beside the PLE file."""
    from packager.estimate import mapped_tables
    from packager.recipes.common import RecipeOptions
    from packager.recipes.nbits import int4
    from packager.stages.quantize import keep_tables_mapped

    _, out, made = exported
    model = onnx.load(out / "model.onnx", load_external_data=False)
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and "embed_tokens" in n.input[0])
    head = f"{gather.input[0]}_transposed"
    assert any(n.op_type == "MatMul" and n.input[1] == head for n in model.graph.node)
    result = int4(out / "model.onnx", tmp_path / "model.onnx", RecipeOptions())
    assert "tied" in result.params["embedding"]
    # the recipe puts the source's mapped tables back in their file itself, before the model is read whole: E2B's
    # 2.24 GiB per-layer table, inline, is over protobuf's 2 GB (int4 failed there: EncodeError)
    assert set(made["ple_tensors"]) <= set(mapped_tables(onnx.load(tmp_path / "model.onnx", load_external_data=False)))
    keep_tables_mapped(out / "model.onnx", tmp_path / "model.onnx")   # the quantize stage's step after the recipe
    quantized = onnx.load(tmp_path / "model.onnx", load_external_data=False)
    vocab = ECLASS["vocab_size"]
    tables = [t.name for t in quantized.graph.initializer
              if t.dims and t.dims[0] in (vocab, ECLASS["hidden_size"]) and len(t.dims) >= 2 and vocab in t.dims
              and not t.name.startswith("ple_") and "scales" not in t.name]
    assert sorted(tables) == [f"{head}_Q4", f"{head}_Q4_untied"]
    where = {t.name: {e.key: e.value for e in t.external_data}.get("location") for t in quantized.graph.initializer}
    assert where[f"{head}_Q4"] is None and where[f"{head}_Q4_untied"] == "model.embedding.data"
    assert {n for n, f in where.items() if f == "model.embedding.data"} == {f"{head}_Q4_untied",
                                                                           f"{head}_Q4_untied_scales"}
    assert set(mapped_tables(quantized)) == set(made["ple_tensors"]) | {f"{head}_Q4_untied",
                                                                         f"{head}_Q4_untied_scales"}


def test_the_phone_app_loads_the_onnx_with_its_ple_file(exported: tuple) -> None:
    """The PLE table is the export's one mapped file, so a phone bundle keeps model.onnx and model.ple.data rather
    than an .ort file, whose flatbuffer would hold the table resident (packager/mobile.py loads_onnx; the bundle's
    files and examples: tests/test_mobile.py)."""
    from packager.mobile import loads_onnx
    from packager.stages.mobile import mapped_files

    _, out, made = exported
    files = mapped_files(out / "model.onnx")
    assert list(files) == [made["ple_file"]] and loads_onnx(sum(files.values()))
    assert files[made["ple_file"]] >= PLE_VOCAB * ECLASS["num_hidden_layers"] * ECLASS["hidden_size_per_layer_input"]


def io_of(out: Path, window: int) -> dict:
    """runtime.io as the decoder family describes it for this graph (its sliding layers' `window`: the config's)."""
    inputs, outputs = signature(onnx.load(out / "model.onnx", load_external_data=False))
    past = [{"name": n, "shape": s} for n, s in inputs.items() if n.startswith("past_key_values.")]
    return {"inputs": [{"name": n, "shape": s, "dtype": "int64" if "past" not in n else "float32"}
                       for n, s in inputs.items()], "outputs": [{"name": n, "shape": s} for n, s in outputs.items()],
            "logits": "last", "kv": {"layers": len(past) // 2, "heads": past[0]["shape"][2],
                                     "head_dim": past[0]["shape"][3], "dtype": "float32", "appends": True,
                                     "window": window},
            "eos_token_ids": [], "max_length": 512}


def parity(exported: tuple, spec: dict) -> dict:
    """PARITY's run of an export against its PyTorch model, with what every E-class export guarantees checked."""
    source, out, made = exported
    targets = Path(__file__).resolve().parents[1] / "targets"
    proc = subprocess.run([str(GENAI.python), "-c", PARITY, str(source), str(out / "model.onnx"), str(targets),
                           json.dumps(io_of(out, spec["sliding_window"])), made["ple_file"]],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run: dict = json.loads(proc.stdout.splitlines()[-1])
    assert run["tokens"] == run["ref"] and len(run["tokens"]) == 8
    # int8 rows: the logits move by a small part of their size, never the greedy choice
    assert run["first_diff"] < 0.05 * run["first_scale"]
    assert run["scores"] == [5, spec["vocab_size"]]   # teacher-forced, a position at a time
    # after the 20-token prompt, a sliding layer's cache holds its window (the next token's keys), a full one all
    window = spec["sliding_window"]
    assert run["cache"] == {f"past_key_values.{n}.{kind}": 20 if spec["layer_types"][n] == "full_attention"
                            else window - 1 for n in made["owners"] for kind in ("key", "value")}
    # the device prefills a long prompt in chunks (PREFILL_CHUNK): the same logits and cache as one pass
    chunks = run["chunks"]
    assert chunks["same_shapes"] and chunks["logits"] < 1e-4 * chunks["scale"] and chunks["cache"] < 1e-3
    assert run["mapped"]                               # memory-mapped, not read into the heap
    return run


def test_generates_the_pytorch_models_tokens_and_maps_the_ple_file(exported: tuple) -> None:
    source, out, made = exported
    run = parity(exported, ECLASS)
    table = (out / made["ple_file"]).stat().st_size
    # the tokens (all below 512) read rows in the first pages only; the kernel may map them in 2 MB folios
    assert run["loaded"] <= table and run["after"] < table / 4


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def packager(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "packager", *args], capture_output=True, text=True, env=ENV,
                          timeout=900)


@pytest.fixture(scope="module")
def packaged(exported: tuple, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The rpi5 bundle (int8-dynamic) of the tiny E model: its archive and package's stderr."""
    source, _, _ = exported
    out = tmp_path_factory.mktemp("eclass-dist")
    proc = packager("package", str(source), "--target", "rpi5", "--recipe", "int8-dynamic", "--out", str(out),
                    "--no-cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(out.glob("*.tar.gz")), proc.stderr


def test_packages_for_rpi5_with_the_ple_rows_fed_by_the_loop(packaged: tuple, tmp_path: Path) -> None:
    """The architecture routes to the E-class exporter; onnxruntime runs it (genai's builder refuses PLE); int8
    weights keep the greedy tokens; the model takes the PLE table's rows as inputs, which run.py reads from the
    file (packager/row_feed.py); the estimate counts the table as read from storage, not resident, and a pass's
    rows in the peak; the smoke passes."""
    archive, stderr = packaged
    assert "mapped " in stderr and "MiB of lookup tables" in stderr
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "bundle", filter="data")
    bundle = next((tmp_path / "bundle").iterdir())
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["runtime"]["package"] == "onnxruntime" and manifest["runtime"]["io"]["logits"] == "last"
    assert manifest["runtime"]["io"]["kv"]["window"] == ECLASS["sliding_window"]
    # verify's reference is the model itself in PyTorch, not packager's own export of it
    assert "PyTorch" in json.dumps(manifest["accuracy"])
    table = (bundle / "model" / "model.ple.data").stat().st_size
    estimate = manifest["memory"]["estimate"]
    # the table is read from storage: counted beside the peak, and in it the rows the loop feeds the largest pass
    assert estimate["mapped_bytes"] >= PLE_VOCAB * ECLASS["num_hidden_layers"] * ECLASS["hidden_size_per_layer_input"]
    assert estimate["mapped_bytes"] <= table
    model = onnx.load(bundle / "model" / "model.onnx", load_external_data=False)
    fed = {t.input: (t.bytes, t.rows) for t in row_tables(model)}
    assert {"ple_rows", "ple_scales"} <= set(fed)
    assert estimate["breakdown"]["table_rows"] == fed_bytes(fed, prefill_chunk(estimate["context"]))
    assert estimate["breakdown"]["weights_external"] < table
    # the KV cache as plan counts it: the sliding layers at their window, the full ones at the context, fp32
    layers = decoder_config.read(ECLASS, "config.json").layers
    assert estimate["breakdown"]["kv_cache"] == \
        sum(layer.kv_bytes(estimate["context"], True, 32) for layer in layers if layer.owns_cache)
    smoke = subprocess.run([sys.executable, "smoke_test.py"], cwd=bundle, capture_output=True, text=True, timeout=600)
    assert smoke.returncode == 0 and "PASS" in smoke.stdout, smoke.stdout + smoke.stderr
    # the loop reads the table's rows and feeds them: no mapping of its file in the process, before or after a run
    assert manifest["runtime"]["mapped"] == ["model.ple.data"]
    loaded = subprocess.run([sys.executable, "-c", FED], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    fed_run = json.loads(loaded.stdout)
    assert {"ple_rows", "ple_scales"} <= set(fed_run["inputs"]) and fed_run["tokens"]
    assert not any(path.endswith("model.ple.data") for path in fed_run["maps"])


# run.py's runner in the bundle: the inputs it feeds from the tables' files, and the files mapped after a run
FED = r"""
import json, run
runner = run.load()
_, tokens = runner.generate_text("hello", 4)
maps = [line.split()[-1] for line in open("/proc/self/maps") if len(line.split()) == 6]
print(json.dumps({"inputs": [t["input"] for t in runner.rows.tables], "maps": maps, "tokens": tokens}))
"""


def test_the_phone_bundle_feeds_the_rows_in_its_app_examples_as_run_py_does(exported: tuple,
                                                                            tmp_path: Path) -> None:
    """On the phone the loop is the app's: the Kotlin and Swift examples read each table's rows for the sample's
    tokens at the offsets the model's record gives (readRows), with each table's type, and feed them as the
    model's inputs; the estimate is the one run.py's loop gets (a pass's rows), and the smoke passes."""
    source, _, _ = exported
    proc = packager("package", str(source), "--target", "phone", "--recipe", "int8-dynamic", "--out",
                    str(tmp_path / "dist"), "--no-cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with tarfile.open(next((tmp_path / "dist").glob("*.tar.gz"))) as tar:
        tar.extractall(tmp_path / "bundle", filter="data")
    bundle = next((tmp_path / "bundle").iterdir())
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["mobile"]["format"] == "onnx"
    # the table's file is no initializer's now, and the app copies it beside the model all the same
    assert "model/model.ple.data" in manifest["mobile"]["external_data"]
    assert '"model.ple.data" to ' in next((bundle / "android").glob("*Model.kt")).read_text()
    assert "model/model.ple.data" in (bundle / "android" / "README.md").read_text()
    tables = row_tables(onnx.load(bundle / "model" / "model.onnx", load_external_data=False))
    kotlin = next((bundle / "android").glob("*Model.kt")).read_text()
    swift = next((bundle / "ios").glob("*Model.swift")).read_text()
    types = {"int8": ("INT8", ".int8"), "float32": ("FLOAT", ".float")}
    for t in tables:
        java, element = types[t.dtype]
        assert f'"{t.input}" to OnnxTensor.createTensor(env, readRows("{t.file}", {t.offset}L, {t.row_bytes}, ' \
               f'{t.rows}L, ids)' in kotlin and f"OnnxJavaType.{java})," in kotlin
        assert f'"{t.input}": try readRows("{t.file}", offset: {t.offset}, rowBytes: {t.row_bytes}, ' \
               f'rows: {t.rows}, ids: ids' in swift and f"type: {element})," in swift
    assert "private fun readRows(" in kotlin and "private func readRows(" in swift and "{{" not in kotlin + swift
    assert "val ids = " in kotlin and "let ids: [Int64] = " in swift
    estimate = manifest["memory"]["estimate"]
    fed = {t.input: (t.bytes, t.rows) for t in tables}
    assert estimate["breakdown"]["table_rows"] == fed_bytes(fed, prefill_chunk(estimate["context"]))
    smoke = subprocess.run([sys.executable, "smoke_test.py"], cwd=bundle, capture_output=True, text=True, timeout=600)
    assert smoke.returncode == 0 and "PASS" in smoke.stdout, smoke.stdout + smoke.stderr


@pytest.mark.skipif(not any(shutil.which(name) for name in emulate.QEMU_BINARIES),
                    reason="qemu-user-static is not installed (apt-get install qemu-user-static)")
def test_the_bundle_passes_its_smoke_test_on_an_emulated_pi5(packaged: tuple) -> None:
    """The E-class bundle on the device's userland (arm64 Debian, onnxruntime's aarch64 wheel, qemu's Cortex-A76):
    the mapped PLE file and the last-position logits run there too, and answer as PyTorch did (22 s here, the
    userland cached)."""
    proc = packager("smoke", str(packaged[0]), "--emulate", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["verdict"] == "PASS"
    emu = result["report"]["emulation"]
    assert (emu["emulated_cpu"], emu["runtime"]) == ("cortex-a76", "onnxruntime")
    assert result["report"]["accuracy"]["prompts"] > 0   # it generated, and PASS: within the thresholds


@pytest.fixture(scope="module")
def exported_3n(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("eclass-3n")
    source = make_eclass(root / "tiny-gemma3n-e", GENAI.python, model_type="gemma3n_text")
    return source, root / "onnx", eclass.export(source, root / "onnx", root / "work")


def test_a_gemma_3n_generates_the_pytorch_models_tokens(exported_3n: tuple) -> None:
    """Gemma 3n's AltUp streams, LAuReL and activation sparsity traced with the cache as tensors: the PyTorch
    model's greedy tokens, prompt ids past the per-layer table reading its row 0 as transformers' do, and the
    checkpoint's k/v projections of the KV-shared layers (read by nothing) left out of the graph."""
    _, out, made = exported_3n
    parity(exported_3n, ECLASS_3N)
    assert made["owners"] == [0, 1, 2, 3]   # the last num_kv_shared_layers read an earlier layer's cache
    graph = onnx.load(out / "model.onnx", load_external_data=False)
    rows = next(t for t in graph.graph.initializer if t.name == "ple_rows")
    assert list(rows.dims) == [ECLASS_3N["vocab_size_per_layer_input"],
                               ECLASS_3N["num_hidden_layers"] * ECLASS_3N["hidden_size_per_layer_input"]]
    assert "Erfinv" not in {n.op_type for n in graph.graph.node}
    # AltUp's router weight, read in predict and in correct: the weight itself, not torch's Identity of it, which
    # the quantizers refuse (onnx_rewrite.bypass_identities)
    assert not hidden_weights(graph)


def multimodal(source: Path, folder: Path) -> Path:
    """`source`'s text decoder as a published multimodal checkpoint holds it (Gemma3nForConditionalGeneration: the
    language model's tensors under model.language_model., beside the encoders'; its config under text_config)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    folder.mkdir()
    for f in source.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copyfile(f, folder / f.name)
    text = json.loads((source / "config.json").read_text())
    text.pop("architectures")
    (folder / "config.json").write_text(json.dumps({"architectures": ["Gemma3nForConditionalGeneration"],
                                                    "model_type": "gemma3n", "text_config": text,
                                                    "tie_word_embeddings": True}))
    state = {"model.language_model." + k.removeprefix("model."): v
             for k, v in load_file(source / "model.safetensors").items()}
    state |= {"model.vision_tower.timm_model.conv_stem.conv.weight": np.ones((4, 3, 3, 3), np.float32),
              "model.audio_tower.subsample_conv_projection.conv_0.conv.weight": np.ones((4, 1, 3, 3), np.float32)}
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_a_multimodal_gemma_3n_folder_exports_its_text_decoder(exported_3n: tuple, tmp_path: Path) -> None:
    """A Gemma3nForConditionalGeneration folder (the text decoder beside its vision and audio encoders) exports
    its text decoder: the same files as the text decoder's own folder, the encoders' tensors not read."""
    source, out, made = exported_3n
    folder = multimodal(source, tmp_path / "gemma3n-mm")
    assert eclass.export(folder, tmp_path / "onnx", tmp_path / "work")["owners"] == made["owners"]
    for name in ("model.onnx", "model.onnx.data", made["ple_file"]):
        assert (tmp_path / "onnx" / name).read_bytes() == (out / name).read_bytes(), name


def test_a_multimodal_gemma_3n_folder_packages_its_text_decoder_for_rpi5(exported_3n: tuple, tmp_path: Path) -> None:
    """The source stage takes it as a decoder (not an encoder-decoder of an unknown type), its positions from
    text_config (not the 512 a config without max_position_embeddings gets); int4-mixed (int4 alone changes this
    random model's answers: its sensitivity search runs) verified against the PyTorch model; the smoke test passes."""
    folder = multimodal(exported_3n[0], tmp_path / "gemma3n-mm")
    proc = packager("package", str(folder), "--target", "rpi5", "--recipe", "int4-mixed", "--out",
                    str(tmp_path / "dist"), "--no-cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "measuring each layer's sensitivity" in proc.stderr
    with tarfile.open(next((tmp_path / "dist").glob("*.tar.gz"))) as tar:
        tar.extractall(tmp_path / "bundle", filter="data")
    bundle = next((tmp_path / "bundle").iterdir())
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["memory"]["estimate"]["context"] == ECLASS_3N["max_position_embeddings"]
    # AltUp's streams sized once a layer: a Concat of their slices made the estimate double them at every layer
    # (1.6 GB of activations for this 6-layer model; 2^30 times the streams on E2B's 30)
    assert manifest["memory"]["estimate"]["breakdown"]["activations"] < 64 * 2**20
    assert manifest["runtime"]["package"] == "onnxruntime" and manifest["runtime"]["io"]["logits"] == "last"
    # the per-layer table, and int4's lookup copy of the tied embedding (recipes/nbits.untie_embedding)
    assert sorted(manifest["runtime"]["mapped"]) == ["model.embedding.data", "model.ple.data"]
    assert "PyTorch" in json.dumps(manifest["accuracy"])
    # the search's layers are the decoder's blocks (the exporter scopes each layer's matmuls by their module), not
    # each matmul on its own (94 of them, before)
    layers = {r["layer"] for r in manifest["recipe"]["extra"]["search"]["sensitivity"]}
    assert {f"layers.{i}" for i in range(ECLASS_3N["num_hidden_layers"])} <= layers and len(layers) < 18, sorted(layers)
    smoke = subprocess.run([sys.executable, "smoke_test.py"], cwd=bundle, capture_output=True, text=True, timeout=600)
    assert smoke.returncode == 0 and "PASS" in smoke.stdout, smoke.stdout + smoke.stderr


def test_pickled_weights_are_refused_naming_safetensors(exported: tuple, tmp_path: Path) -> None:
    """The exporter reads the per-layer table from the safetensors file itself: a folder of pickled weights (loaded
    with --allow-pickle) gets the fix in one sentence, not the adapter's."""
    import torch
    from safetensors.torch import load_file

    source, _, _ = exported
    folder = tmp_path / "pickled"
    folder.mkdir()
    for f in source.iterdir():
        if f.name != "model.safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(source / "model.safetensors"), folder / "pytorch_model.bin")
    proc = packager("package", str(folder), "--target", "rpi5", "--allow-pickle", "--out", str(tmp_path / "dist"),
                    "--no-cache")
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr[-2000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert "pickled" in error and "save_pretrained" in error and "adapter" not in error
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_the_export_is_the_same_bytes_whatever_the_string_hashing(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Bundles are byte-identical for the same inputs: the graph must not follow a set's order (hash seeds 0 and 1
    order {"sliding_attention", "full_attention"} differently)."""
    source = make_eclass(tmp_path / "tiny", GENAI.python)
    files = []
    for seed in ("0", "1"):
        monkeypatch.setenv("PYTHONHASHSEED", seed)
        out = tmp_path / f"onnx-{seed}"
        eclass.export(source, out, tmp_path / "work")
        files.append({f.name: f.read_bytes() for f in sorted(out.iterdir())})
    assert files[0] == files[1]


# The table as the exporter writes it (a slice of rows at a time, read from the safetensors file) against the
# whole table quantized at once, as the exporter did before it streamed; and verify's reference (the table mapped
# from the checkpoint in its stored dtype) against the model loaded whole in fp32.
STREAMED = r"""
import io, json, sys
from pathlib import Path
import numpy as np, torch
from transformers import AutoModelForCausalLM
sys.path.insert(0, sys.argv[2])
import eclass_export as e
source = Path(sys.argv[1])
table = e.CheckpointTensor.find(source, e.PLE_WEIGHT)
whole = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation="eager").eval()
ple = whole.model.embed_tokens_per_layer
rows, scales = e.quantize_rows(ple.weight.detach().float())
e.SLICE_BYTES = 1000 * table.row_bytes * 4 + 4        # slices of 1,000 rows fp32 and a short last one
f = io.BytesIO()
places = e.write_table(f, table, float(ple.scalar_embed_scale))
data = f.getvalue()
def at(name, dtype):
    offset, length, dims = places[name]
    return np.frombuffer(data[offset:offset + length], dtype).reshape(dims), offset
got_rows, rows_at = at("ple_rows", np.int8)
got_scales, scales_at = at("ple_scales", np.float32)
ids = torch.tensor([[0, 5, 1999, 2000, int(table.shape[0]) - 1]])
ref = e.reference(source)
with torch.inference_mode():
    same_lookup = bool(torch.equal(ref.model.embed_tokens_per_layer(ids), ple(ids)))
    prompt = torch.tensor([[3, 50, 200, 511]])   # the main vocabulary's ids (the PLE's is larger)
    same_logits = bool(torch.equal(ref(input_ids=prompt).logits, whole(input_ids=prompt).logits))
print(json.dumps({"rows": bool(np.array_equal(got_rows, rows.numpy())),
                  "scales": bool(np.array_equal(got_scales, (scales * float(ple.scalar_embed_scale)).numpy())),
                  "aligned": [rows_at % e.ALIGN, scales_at % e.ALIGN], "slices": -(-table.shape[0] // 1000),
                  "lookup": same_lookup, "logits": same_logits,
                  "mapped": type(ref.model.embed_tokens_per_layer).__name__}))
"""


def test_the_table_is_quantized_a_slice_at_a_time_and_the_reference_maps_it(exported: tuple, tmp_path: Path) -> None:
    """E2B's table is 8.8 GiB in fp32: the exporter reads it from the safetensors file a slice of rows at a time and
    the reference maps it; both must give what the whole table in fp32 gives, bit for bit."""
    source, _, _ = exported
    code = eclass.exporter_code(tmp_path)
    proc = subprocess.run([str(GENAI.python), "-c", STREAMED, str(source), str(code)], capture_output=True, text=True,
                          timeout=600, env=ENV | {"PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads(proc.stdout.splitlines()[-1])
    assert run["slices"] > 2 and run["rows"] and run["scales"] and run["aligned"] == [0, 0]
    assert run["mapped"] == "MappedRows" and run["lookup"] and run["logits"]
