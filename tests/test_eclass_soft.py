"""Soft tokens in an E-class decoder: a tiny Gemma4ForConditionalGeneration (the E-class text decoder beside a
vision encoder) exported by packager's own exporter takes `soft_tokens` and `soft_mask`, and run.py's Decoder feeds
the image encoder's outputs there, the pad token at their positions of input_ids, as transformers' Gemma4Model
merges them (the per-layer inputs projected from the merged embeddings, the PLE rows read there the pad's). The
PyTorch reference runs in the `genai` environment (transformers 5.x) and writes its answers to an .npz."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from packager import eclass
from packager.decoder_config import SOFT_INPUTS
from packager.device_code import runner
from packager.exporter_envs import GENAI, is_ready
from packager.families import described
from packager.families.base import Export
from packager.row_feed import feed_rows
from tiny_decoders import ECLASS, make_eclass, make_tokenizer

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not is_ready(GENAI), reason="needs `packager env create genai`")]

# the placeholders inside the tiny vocabulary, clear of the prompts' text ids (10 and up)
IMAGE, BOI, EOI = 5, 3, 4
PLACEHOLDERS = {"image_token_id": IMAGE, "boi_token_id": BOI, "eoi_token_id": EOI, "video_token_id": 6,
                "audio_token_id": 7, "boa_token_id": 8, "eoa_token_index": 9}
VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
          "head_dim": 16, "intermediate_size": 64, "patch_size": 4, "position_embedding_size": 64,
          "pooling_kernel_size": 2}
SIDE = 8                        # an image of 8 x 8 patches, pooled 2 x 2: 16 soft tokens
SOFT = (SIDE // VISION["pooling_kernel_size"]) ** 2
# text, the image between its begin and end tokens, text: 27 tokens, the image at positions 6 to 21
PROMPT = [10, 11, 12, 13, 14, BOI] + [IMAGE] * SOFT + [EOI, 20, 21, 22, 23]
TEXT_PROMPT = [10, 11, 12, 13, 14, 30, 31, 32, 33, 34, 35, 36]
NEW_TOKENS = 6
MAX_SOFT_TOKENS = 70

MAKE = r"""
import json, sys, torch
from transformers import Gemma4Config, Gemma4ForConditionalGeneration
text, vision, ids = (json.loads(a) for a in sys.argv[2:5])
torch.manual_seed(0)
config = Gemma4Config(text_config=text, vision_config=vision, audio_config=None, initializer_range=0.2, **ids)
Gemma4ForConditionalGeneration(config).save_pretrained(sys.argv[1])
"""

# The PyTorch answers: the image's soft tokens (get_image_features), the last position's logits of the prompt with
# the image (the model's own merge) and of a text prompt, and each one's greedy continuation. The model's per-layer
# table is the exporter's int8 rows times their scales (quantize_rows): the graph's, so that what is compared is the
# merge and the loop, to fp32 rounding, not the table's 8 bits.
REFERENCE = r"""
import json, sys
import numpy as np, torch
from transformers import Gemma4ForConditionalGeneration
sys.path.insert(0, sys.argv[2])
from eclass_export import quantize_rows
prompt, text_prompt, side, new = json.loads(sys.argv[4])
model = Gemma4ForConditionalGeneration.from_pretrained(sys.argv[1], dtype=torch.float32,
                                                       attn_implementation="eager").eval()
table = model.model.language_model.embed_tokens_per_layer
rows, scales = quantize_rows(table.weight.detach().float())
with torch.no_grad():
    table.weight.copy_(rows.float() * scales)
patch = model.config.vision_config.patch_size
pixels = torch.rand(1, side * side, 3 * patch * patch, generator=torch.Generator().manual_seed(1))
positions = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="xy"), -1).reshape(1, -1, 2)

def greedy(ids, **image):
    ids, tokens = list(ids), []
    for _ in range(new):
        logits = model(input_ids=torch.tensor([ids]), **image).logits[0, -1]
        if not tokens:
            first = logits.numpy()
        tokens.append(int(torch.argmax(logits)))
        ids.append(tokens[-1])
    return first, np.array(tokens)

with torch.inference_mode():
    soft = model.model.get_image_features(pixels, positions).pooler_output[0].numpy()
    image_logits, image_tokens = greedy(prompt, pixel_values=pixels, image_position_ids=positions)
    text_logits, text_tokens = greedy(text_prompt)
np.savez(sys.argv[3], soft=soft, image_logits=image_logits, image_tokens=image_tokens, text_logits=text_logits,
         text_tokens=text_tokens)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any], dict[str, Any]]:
    """The tiny multimodal folder, its export (with the tokenizer: export_folder), what the exporter reported, and
    runtime.io as the decoder family describes it."""
    root = tmp_path_factory.mktemp("eclass-soft")
    source = root / "tiny-gemma4-mm"
    text = {k: v for k, v in ECLASS.items() if k not in ("architectures", "model_type")}
    subprocess.run([str(GENAI.python), "-c", MAKE, str(source), json.dumps(text), json.dumps(VISION),
                    json.dumps(PLACEHOLDERS)], check=True, capture_output=True, timeout=600)
    make_tokenizer(source, int(ECLASS["max_position_embeddings"]))
    # the processor's smallest image budget: 70 soft tokens, so that an image's prompt fits the tiny model's context
    (source / "preprocessor_config.json").write_text(json.dumps({"max_soft_tokens": MAX_SOFT_TOKENS}))
    made = eclass.export_folder(source, root / "onnx", root / "work", lambda line: None)
    io = described(Export(source, "text-generation-with-past", root / "onnx")).to_dict()
    return source, root / "onnx", made, io


@pytest.fixture(scope="module")
def reference(exported: tuple, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    source = exported[0]
    root = tmp_path_factory.mktemp("eclass-soft-reference")
    code = eclass.exporter_code(root)
    proc = subprocess.run([str(GENAI.python), "-c", REFERENCE, str(source), str(code), str(root / "reference.npz"),
                           json.dumps([PROMPT, TEXT_PROMPT, SIDE, NEW_TOKENS])],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(root / "reference.npz"))


def decoder(folder: Path, io: dict[str, Any], chunk: int) -> Any:
    """run.py's Decoder on the model in `folder` (its fed tables' rows read from there), prefilling `chunk` tokens a
    pass."""
    rt = runner()
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    found = rt.Decoder(session, io, rt.RowFeeds(session, folder))
    found.prefill_chunk = chunk
    return found


def close(got: np.ndarray, want: np.ndarray) -> None:
    cosine = float(np.dot(got, want) / (np.linalg.norm(got) * np.linalg.norm(want)))
    assert cosine > 0.9999 and np.allclose(got, want, atol=1e-4), (cosine, float(np.abs(got - want).max()))


def test_the_graph_takes_soft_tokens_and_the_io_describes_them(exported: tuple) -> None:
    """The two inputs after position_ids; the exporter's report and the io (the manifest's runtime.io) say so, with
    the soft tokens' width and the pad token the loop puts at their positions."""
    _, out, made, io = exported
    model = onnx.load(out / "model.onnx", load_external_data=False)
    names = [i.name for i in model.graph.input]
    assert names[:5] == ["input_ids", "attention_mask", "position_ids", *SOFT_INPUTS]
    types = {i.name: i.type.tensor_type for i in model.graph.input}
    assert types["soft_tokens"].elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in types["soft_tokens"].shape.dim] == \
        ["batch", "sequence", ECLASS["hidden_size"]]
    assert types["soft_mask"].elem_type == onnx.TensorProto.UINT8   # an iOS app cannot make a bool tensor
    assert made["soft_tokens"] and made["pad_token_id"] == ECLASS["pad_token_id"]
    # the vision encoder that makes them, exported beside the decoder: its graph, placeholders and processor figures
    pre = {"patch_size": VISION["patch_size"], "max_soft_tokens": MAX_SOFT_TOKENS,
           "pooling_kernel_size": VISION["pooling_kernel_size"], "rescale_factor": 1 / 255, "processor": "gemma4"}
    image = {"file": "encoders/vision.onnx", "token_id": IMAGE, "begin": BOI, "end": EOI, "pre": pre}
    assert io["soft"] == {"inputs": list(SOFT_INPUTS), "hidden": ECLASS["hidden_size"],
                          "pad_token_id": ECLASS["pad_token_id"], "encoders": {"image": image}}
    assert (out / image["file"]).is_file() and made["encoders"] == {"image": image}
    assert {"soft_tokens": "float32", "soft_mask": "uint8"} == \
        {i["name"]: i["dtype"] for i in io["inputs"] if i["name"] in SOFT_INPUTS}


@pytest.mark.parametrize("chunk", [64, 8, 5])
def test_the_images_soft_tokens_give_the_pytorch_models_logits_and_tokens(exported: tuple, reference: dict,
                                                                           chunk: int) -> None:
    """The prompt with an image, its soft tokens (PyTorch's get_image_features) fed by run.py's Decoder: in one pass
    (64), and in chunks whose boundaries fall inside the image's span (8: at 8 and 16; 5: at 10, 15, 20), the last
    position's logits and the greedy continuation are the PyTorch model's (pixel_values in, its own merge)."""
    _, out, _, io = exported
    rt = runner()
    soft = rt.Soft.at_tokens(PROMPT, {IMAGE: reference["soft"]})
    assert list(soft.positions) == list(range(6, 6 + SOFT))
    tokens, first = decoder(out, io, chunk).generate(PROMPT, NEW_TOKENS, soft)
    close(first, reference["image_logits"])
    assert tokens == reference["image_tokens"].tolist()
    # without its soft tokens the prompt reads the pad's embedding there: other logits
    assert not np.allclose(decoder(out, io, chunk).generate(PROMPT, 1)[1], reference["image_logits"], atol=1e-2)


def test_a_text_prompt_through_the_same_graph_gives_the_pytorch_models_logits(exported: tuple,
                                                                            reference: dict) -> None:
    """No soft tokens: zeros and a mask all False, the embeddings the tokens' own."""
    _, out, _, io = exported
    tokens, first = decoder(out, io, 8).generate(TEXT_PROMPT, NEW_TOKENS)
    close(first, reference["text_logits"])
    assert tokens == reference["text_tokens"].tolist()


def test_the_rows_fed_by_the_loop_are_the_pads_at_the_soft_positions(exported: tuple, reference: dict,
                                                                      tmp_path: Path) -> None:
    """packager/row_feed.py (the quantize stage's rewrite) turns the per-layer table's readers onto rows the loop
    reads for input_ids: the soft inputs stay as they were, and the loop reads the pad's rows at the image's
    positions, so the answers stay PyTorch's."""
    _, out, _, io = exported
    fed = tmp_path / "fed"
    shutil.copytree(out, fed)
    tables = feed_rows(fed / "model.onnx")
    assert {"ple_rows", "ple_scales"} <= {t.input for t in tables}
    inputs = {i.name for i in onnx.load(fed / "model.onnx", load_external_data=False).graph.input}
    assert set(SOFT_INPUTS) <= inputs
    rt = runner()
    run = decoder(fed, io, 8)
    assert run.rows.tables
    soft = rt.Soft.at_tokens(PROMPT, {IMAGE: reference["soft"]})
    tokens, first = run.generate(PROMPT, NEW_TOKENS, soft)
    close(first, reference["image_logits"])
    assert tokens == reference["image_tokens"].tolist()


def test_the_loop_puts_the_pad_at_the_soft_positions_of_each_pass(exported: tuple) -> None:
    """A pass's feeds: the rows at its own positions of the prompt, the pad token in input_ids there, zeros and
    False elsewhere; a decode step after the prompt has none."""
    _, out, _, io = exported
    rt = runner()
    rows = np.arange(SOFT * ECLASS["hidden_size"], dtype=np.float32).reshape(SOFT, -1)
    soft = rt.Soft.at_tokens(PROMPT, {IMAGE: rows})
    loop = decoder(out, io, 8)
    feeds = loop.feeds(PROMPT[8:16], loop.empty_past(), 8, soft)   # inside the image's span
    assert feeds["input_ids"].tolist() == [[ECLASS["pad_token_id"]] * 8]
    assert feeds["soft_mask"].all() and np.array_equal(feeds["soft_tokens"][0], rows[2:10])
    feeds = loop.feeds(PROMPT[:8], loop.empty_past(), 0, soft)     # the text, then the image's first two
    assert feeds["soft_mask"].tolist() == [[False] * 6 + [True] * 2]
    assert feeds["input_ids"][0, :6].tolist() == PROMPT[:6] and not feeds["soft_tokens"][0, :6].any()
    feeds = loop.feeds([42], loop.empty_past(), len(PROMPT), soft)
    assert feeds["input_ids"].tolist() == [[42]] and not feeds["soft_mask"].any()
    with pytest.raises(ValueError, match="occurs 16 times"):
        rt.Soft.at_tokens(PROMPT, {IMAGE: rows[:3]})


def test_a_text_only_checkpoints_graph_takes_no_soft_tokens(tmp_path: Path) -> None:
    """A Gemma4ForCausalLM folder: the graph's inputs as they were, nothing recorded, no io.soft, and a Decoder that
    is handed soft tokens refuses them."""
    source = make_eclass(tmp_path / "tiny", GENAI.python)
    made = eclass.export_folder(source, tmp_path / "onnx", tmp_path / "work", lambda line: None)
    model = onnx.load(tmp_path / "onnx" / "model.onnx", load_external_data=False)
    names = [i.name for i in model.graph.input]
    assert names[:4] == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key"]
    assert not set(SOFT_INPUTS) & set(names)
    assert made["soft_tokens"] is False and "pad_token_id" not in made
    assert eclass.soft_description(tmp_path / "onnx" / "model.onnx") is None
    io = described(Export(source, "text-generation-with-past", tmp_path / "onnx")).to_dict()
    assert "soft" not in io
    rt = runner()
    loop = decoder(tmp_path / "onnx", io, 8)
    with pytest.raises(ValueError, match="takes no soft tokens"):
        loop.feeds([10, IMAGE], loop.empty_past(), 0, rt.Soft.at_tokens([10, IMAGE], {IMAGE: np.zeros((1, 64))}))


# run.py's runner in the bundle, the image's soft tokens from the .npz given
BUNDLE_RUN = r"""
import json, sys
import numpy as np
import run
prompt, image, new = json.loads(sys.argv[2])
runner = run.load()
soft = run.Soft.at_tokens(prompt, {image: np.load(sys.argv[1])["soft"]})
tokens, first = runner.decoder.generate(prompt, new, soft)
print(json.dumps({"tokens": tokens, "inputs": [t["input"] for t in runner.rows.tables]}))
"""


@pytest.fixture(scope="module")
def bundle(exported: tuple, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`packager package` of the tiny multimodal folder (rpi5, fp32: every component, the encoders too), extracted."""
    root = tmp_path_factory.mktemp("eclass-soft-bundle")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "packager", "package", str(exported[0]), "--target", "rpi5",
                           "--recipe", "fp32", "--out", str(root / "dist"), "--no-cache"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with tarfile.open(next((root / "dist").glob("*.tar.gz"))) as tar:
        tar.extractall(root / "bundle", filter="data")
    return next((root / "bundle").iterdir())


def test_the_bundle_lists_the_soft_inputs_and_its_run_py_takes_the_images_tokens(exported: tuple, reference: dict,
                                                                                 bundle: Path, tmp_path: Path) -> None:
    """`packager package` (rpi5, fp32): the manifest's runtime.io lists soft_tokens and soft_mask and describes them
    (io.soft, in the schema), verify and the smoke test run the text prompts through the same graph, and the
    bundle's own run.py, given the image's soft tokens, continues the prompt as PyTorch does."""
    import jsonschema

    manifest = json.loads((bundle / "manifest.json").read_text())
    schema = json.loads((Path(__file__).resolve().parents[1] / "schemas" / "manifest.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(manifest)
    io = manifest["runtime"]["io"]
    assert io["soft"] == exported[3]["soft"]
    assert [i["name"] for i in io["inputs"]][3:5] == list(SOFT_INPUTS)
    smoke = subprocess.run([sys.executable, "smoke_test.py"], cwd=bundle, capture_output=True, text=True, timeout=600)
    assert smoke.returncode == 0 and "PASS" in smoke.stdout, smoke.stdout + smoke.stderr
    # the device's own run of the sample picture, its encoder loaded for it, against the fp32 export's tokens
    assert "picture.png: 100.0% of the fp32 export's greedy tokens" in smoke.stdout, smoke.stdout
    np.savez(tmp_path / "soft.npz", soft=reference["soft"])
    ran = subprocess.run([sys.executable, "-c", BUNDLE_RUN, str(tmp_path / "soft.npz"),
                          json.dumps([PROMPT, IMAGE, NEW_TOKENS])], cwd=bundle, capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    result = json.loads(ran.stdout.splitlines()[-1])
    assert {"ple_rows", "ple_scales"} <= set(result["inputs"])   # the rows fed, the pad's at the image
    assert result["tokens"] == reference["image_tokens"].tolist()


# PyTorch's greedy tokens for run.py's prompt ids and the image's patches (the device's pre-processing, which
# tests/test_gemma4_image.py checks against transformers' processor), the model's per-layer table as the graph's.
IMAGE_REFERENCE = r"""
import json, sys
import numpy as np, torch
from transformers import Gemma4ForConditionalGeneration
sys.path.insert(0, sys.argv[2])
from eclass_export import quantize_rows
model = Gemma4ForConditionalGeneration.from_pretrained(sys.argv[1], dtype=torch.float32,
                                                       attn_implementation="eager").eval()
table = model.model.language_model.embed_tokens_per_layer
rows, scales = quantize_rows(table.weight.detach().float())
inputs = np.load(sys.argv[3])
ids, tokens = [int(i) for i in inputs["ids"]], []
image = {"pixel_values": torch.from_numpy(inputs["values"][None]),
         "image_position_ids": torch.from_numpy(inputs["positions"][None])}
with torch.inference_mode():
    table.weight.copy_(rows.float() * scales)
    for _ in range(int(sys.argv[4])):
        tokens.append(int(torch.argmax(model(input_ids=torch.tensor([ids]), **image).logits[0, -1])))
        ids.append(tokens[-1])
print(json.dumps(tokens))
"""


def test_run_py_reads_an_image_with_its_encoder_loaded_on_demand(exported: tuple, bundle: Path,
                                                                 tmp_path: Path) -> None:
    """`python run.py --image photo.png --prompt TEXT`: the bundle ships the vision encoder (model/encoders/, the
    manifest's io.soft.encoders), run.py reads the PNG as transformers' processor does, loads the encoder for it and
    releases it, puts [begin] + the image's placeholders + [end] after the BOS, and continues with PyTorch's own
    tokens for that image and those ids. A .wav for a model without an audio encoder is one sentence, exit 2."""
    rt = runner()
    manifest = json.loads((bundle / "manifest.json").read_text())
    encoders = manifest["runtime"]["io"]["soft"]["encoders"]
    # verify judged the packaged encoder and decoder on a generated picture against the fp32 export's (fp32: equal)
    media = manifest["accuracy"]["media"]["picture.png"]
    assert media["token_agreement"] == 1.0 and media["logits_cosine"] > 0.9999
    assert (bundle / "samples" / "media" / "picture.png").is_file()
    assert set(encoders) == {"image"} and (bundle / "model" / encoders["image"]["file"]).is_file()
    image = encoders["image"]
    assert image["pre"]["max_soft_tokens"] == MAX_SOFT_TOKENS and image["pre"]["patch_size"] == VISION["patch_size"]
    ys, xs = np.mgrid[0:48, 0:40]
    pixels = np.stack([ys * 5, xs * 6, (ys + xs) * 2], axis=-1).astype(np.uint8)
    rt.write_png(tmp_path / "photo.png", pixels)
    ran = subprocess.run([sys.executable, "run.py", "--image", str(tmp_path / "photo.png"), "--prompt", "a b c",
                          "--max-new-tokens", str(NEW_TOKENS), "--json"], cwd=bundle, capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    result = json.loads(ran.stdout)
    values, positions, n = rt.gemma4_patches(pixels, image["pre"])
    ids = result["prompt_ids"]
    start = ids.index(BOI)
    assert ids[start:start + n + 2] == [BOI] + [IMAGE] * n + [EOI] and 0 < n <= MAX_SOFT_TOKENS
    np.savez(tmp_path / "inputs.npz", ids=np.array(ids), values=values, positions=positions)
    code = eclass.exporter_code(tmp_path)
    proc = subprocess.run([str(GENAI.python), "-c", IMAGE_REFERENCE, str(exported[0]), str(code),
                           str(tmp_path / "inputs.npz"), str(NEW_TOKENS)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["tokens"] == json.loads(proc.stdout.splitlines()[-1])
    # --measure: the text run at the bundle's context, then the image mode with that cache held; the peak the worst
    measured = subprocess.run([sys.executable, "run.py", "--measure"], cwd=bundle, capture_output=True, text=True,
                              timeout=300)
    assert measured.returncode == 0, measured.stderr[-2000:]
    peaks = json.loads(measured.stdout.splitlines()[-1])
    image_peak = peaks["modes"]["image"]["peak_bytes"]
    assert image_peak > 0 and peaks["peak_bytes"] == max(peaks["load_peak_bytes"], peaks["run_peak_bytes"], image_peak)
    memory = json.loads((bundle / "manifest.json").read_text())["memory"]
    assert "modes" not in memory   # measured: not in the manifest, which names the encoders' class and files
    vision = bundle / "model" / "encoders" / "vision.onnx"
    assert memory["on_demand"]["image"] == {"file": "model/encoders/vision.onnx", "size_bytes": vision.stat().st_size}
    rt.write_wav(tmp_path / "clip.wav", np.zeros(1600), 16000)
    refused = subprocess.run([sys.executable, "run.py", "--audio", str(tmp_path / "clip.wav"), "--prompt", "a"],
                             cwd=bundle, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "no audio encoder" in refused.stderr, refused.stderr


def test_check_names_the_encoders_on_demand_and_each_modes_peak(exported: tuple) -> None:
    """`packager check --json`: the vision encoder's file and size apart from the resident model (on_demand), the
    image mode's measured peak, and the verdict on the worst of the text run and that mode."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "packager", "check", str(exported[0]), "--target", "rpi5",
                           "--recipe", "fp32", "--json"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert set(result["on_demand"]) == {"image"} and result["on_demand"]["image"]["size_bytes"] > 0
    measured = result["measured"]
    assert measured["peak_bytes"] == max(measured["load_peak_bytes"], measured["run_peak_bytes"],
                                         measured["modes"]["image"]["peak_bytes"])
    assert result["budget_bytes"] - result["headroom_bytes"] == measured["peak_bytes"]
    # the estimate of each mode from the graphs (estimate.with_modes): the decoder held, the encoder's own estimate
    # beside it; its high side is never below the mode's measured peak
    image = result["estimate"]["modes"]["image"]
    assert result["estimate"]["high_bytes"] < image["high_bytes"] and 0 < image["encoder_high_bytes"]
    assert image["low_bytes"] < image["high_bytes"] and measured["modes"]["image"]["peak_bytes"] <= image["high_bytes"]
    # without a measurement the verdict is the worst mode's estimate
    proc = subprocess.run([sys.executable, "-m", "packager", "check", str(exported[0]), "--target", "rpi5",
                           "--recipe", "fp32", "--no-measure", "--budget", str(image["high_bytes"] - 1), "--json"],
                          capture_output=True, text=True, env=env, timeout=900)
    estimated = json.loads(proc.stdout)
    assert estimated["verdict_basis"] == "estimate (high)" and not estimated["fits"], proc.stderr[-2000:]
    worst = estimated["estimate"]["modes"]["image"]["high_bytes"]
    assert estimated["budget_bytes"] - estimated["headroom_bytes"] == worst


def test_the_phone_examples_feed_a_text_pass_its_soft_inputs(exported: tuple, tmp_path: Path) -> None:
    """A phone bundle of the multimodal folder: its Kotlin and Swift examples feed soft_tokens (zeros) and
    soft_mask (uint8 zeros, a type both APIs make: onnxruntime's Swift API has no bool tensor), so that a text pass
    runs; the Swift example names the element type as Swift imports it (.uInt8)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "packager", "package", str(exported[0]), "--target", "phone",
                           "--recipe", "fp32", "--out", str(tmp_path / "dist")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with tarfile.open(next((tmp_path / "dist").glob("*.tar.gz"))) as tar:
        tar.extractall(tmp_path / "bundle", filter="data")
    bundle = next((tmp_path / "bundle").iterdir())
    kotlin = next((bundle / "android").glob("*Model.kt")).read_text()
    swift = next((bundle / "ios").glob("*Model.swift")).read_text()
    assert '"soft_mask" to OnnxTensor.createTensor(env, ByteBuffer.wrap(ByteArray(' in kotlin
    assert "OnnxJavaType.UINT8)" in kotlin and '"soft_tokens" to OnnxTensor.createTensor(env, FloatBuffer' in kotlin
    assert '"soft_mask": try Self.tensor([UInt8](repeating: 0' in swift and "type: .uInt8)" in swift
    assert ".uint8" not in swift
