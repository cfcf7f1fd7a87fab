"""Encoder-decoder models (issue 11): a Whisper-class speech model and a ViT + GPT-2 captioner packaged as
one bundle each (encoder and merged decoder), with per-component recipes, memory and an end-to-end smoke
test from raw audio and images. The models are random-weight samples built locally (sample_models.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, unpack
from packager.config import resolve_package_settings
from packager.device_code import runner
from packager.errors import ExitCode, PackagerError
from packager.options import PackageOptions
from packager.pipeline import check, package
from packager.recipes import parse_recipe, recipe_label
from packager.smoke import run_smoke


def _settings(target: str, out: Path, recipe: str | None = None, budget: str | None = None):
    return resolve_package_settings({"target": target, "out": str(out), "recipe": recipe, "budget": budget})


def test_recipe_per_component_parses_and_refuses() -> None:
    assert parse_recipe("int4") == {"": "int4"}
    assert parse_recipe("encoder=int8-dynamic, decoder=int4") == {"encoder": "int8-dynamic", "decoder": "int4"}
    assert recipe_label({"encoder": "fp16", "decoder": "fp16"}) == "fp16"
    assert recipe_label({"encoder": "int8-dynamic", "decoder": "int4"}) == "encoder=int8-dynamic,decoder=int4"
    for bad, words in (("encoder=int5", "unknown recipe 'int5'"), ("=int4", "names no component"),
                       ("decoder=int4,decoder=fp32", "names decoder twice")):
        with pytest.raises(PackagerError, match=words) as e:
            parse_recipe(bad)
        assert e.value.code == ExitCode.USAGE


def test_log_mel_matches_whisper_feature_extractor() -> None:
    """The device's numpy log-mel (run.py) against transformers' WhisperFeatureExtractor."""
    from transformers import WhisperFeatureExtractor

    rt = runner()
    t = np.arange(16000 * 2) / 16000
    wave = (0.3 * np.sin(2 * np.pi * (200 * t + 450 * t ** 2))).astype(np.float32)
    ours = rt.audio_features(wave, {"sampling_rate": 16000, "n_fft": 400, "hop_length": 160, "feature_size": 80,
                                    "n_samples": 480000, "padding_value": 0.0})
    theirs = WhisperFeatureExtractor(feature_size=80)(wave, sampling_rate=16000, return_tensors="np").input_features[0]
    assert ours.shape == theirs.shape == (80, 3000)
    assert np.abs(ours - theirs).max() < 1e-3


def test_wav_and_png_round_trip(tmp_path: Path) -> None:
    rt = runner()
    wave = np.sin(np.linspace(0, 100, 8000)) * 0.5
    rt.write_wav(tmp_path / "a.wav", wave, 8000)
    back = rt.read_wav(tmp_path / "a.wav", 16000)   # resampled to the model's rate
    assert len(back) == 16000 and abs(float(back.max()) - 0.5) < 0.01
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    rt.write_png(tmp_path / "a.png", pixels)
    assert np.array_equal(rt.read_image(tmp_path / "a.png"), pixels)
    (tmp_path / "b.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not a PNG file"):
        rt.read_image(tmp_path / "b.png")


@pytest.mark.integration
def test_a_jpeg_is_read_upright_as_its_exif_orientation_says_as_transformers_reads_it(tmp_path: Path) -> None:
    """A phone's photo is stored sideways with an EXIF orientation; transformers' load_image turns it upright
    before its processor sees it, and so does the bundle's read_image."""
    from PIL import Image
    from transformers.image_utils import load_image

    y, x = np.mgrid[0:24, 0:40]
    pixels = np.stack([x * 6, y * 10, (x + y) * 4], axis=-1).astype(np.uint8)   # 24 tall, 40 wide
    exif = Image.Exif()
    exif[0x0112] = 6   # Orientation: the stored image is to be turned 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", quality=95, exif=exif)
    read = runner().read_image(tmp_path / "photo.jpg")
    assert read.shape == (40, 24, 3)
    assert np.array_equal(read, np.asarray(load_image(str(tmp_path / "photo.jpg"))))


def test_whisper_packages_for_the_phone_and_smokes_end_to_end(tmp_path: Path) -> None:
    """Whisper-class speech model for the phone: an int8 encoder and an int4 decoder (the profile's recipe
    and decoder_recipe), each as .ort, verified end to end, and the bundle's smoke test from WAV files."""
    ctx = package("sample:tiny-whisper", _settings("phone", tmp_path / "dist"))
    assert ctx.io.kind == "seq2seq" and ctx.io.modality == "audio"
    assert ctx.recipe_name == "encoder=int8-dynamic,decoder=int4"
    acc = ctx.accuracy.more   # the comparison's own figures
    assert acc["end_to_end"] and acc["token_agreement"] >= 0.9 and acc["min_logits_cosine"] > 0.95
    assert set(acc["components"]) == {"encoder", "decoder"}
    mem = ctx.memory
    assert mem is not None and mem.components is not None
    assert set(mem.components) == {"encoder", "decoder"}
    parts = mem.components
    assert parts["decoder"]["estimate"]["breakdown"]["kv_cache"] > 0 and parts["encoder"]["measured_load_bytes"] > 0
    # The whole counts the runtime once: its estimate is the components' own plus one shared runtime.
    from packager.fit_memory import shared_bytes

    assert sum(c["estimate"]["high_bytes"] for c in parts.values()) + shared_bytes(ctx.profile) == \
        mem.estimate.high_bytes
    bundle = unpack(ctx.archive, tmp_path / "unpacked")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["runtime"]["components"] == {"encoder": "model/encoder_model.ort",
                                                 "decoder": "model/decoder_model_merged.ort"}
    assert manifest["mobile"]["components"]["decoder"]["repacked_int4_tables"]
    assert not (bundle / "model" / "decoder_model.onnx").exists()   # merged: its weights are not shipped twice
    schema = json.loads((REPO / "schemas" / "manifest.schema.json").read_text())
    import jsonschema

    jsonschema.validate(manifest, schema)
    smoke = run_smoke(ctx.archive)
    assert smoke.passed, smoke.output
    assert smoke.report["accuracy"]["token_agreement"] >= 0.9
    # The report shows each component's row.
    from packager.api import PackageResult
    from packager.report import build, markdown

    text = markdown(build([PackageResult.from_context(ctx).to_dict()]))
    assert "| encoder | int8-dynamic |" in text and "| decoder | int4 |" in text
    # The device's CLI: a WAV file in, tokens and text out.
    proc = subprocess.run([sys.executable, str(bundle / "run.py"), str(bundle / "samples" / "sweep.wav"),
                           "--max-new-tokens", "4", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 1 <= len(json.loads(proc.stdout)[0]["tokens"]) <= 4


@pytest.mark.integration
def test_vision_packages_for_jetson_with_a_recipe_per_component(tmp_path: Path) -> None:
    """ViT + GPT-2 for the Jetson, the encoder int8 and the decoder fp16 from the command line's syntax;
    the smoke test reads the PNG samples end to end."""
    ctx = package("sample:tiny-vision",
                  _settings("jetson-orin-nano", tmp_path / "dist", "encoder=int8-dynamic,decoder=fp16"))
    assert ctx.io.modality == "image"
    assert {c.name: c.recipe_name for c in ctx.components} == {"encoder": "int8-dynamic", "decoder": "fp16"}
    assert ctx.recipe.params["components"]["decoder"]["params"]["merged"]
    assert ctx.accuracy.more["token_agreement"] >= 0.9
    assert ctx.memory is not None and ctx.memory.components is not None
    assert ctx.memory.components["decoder"]["recipe"] == "fp16"
    smoke = run_smoke(ctx.archive)
    assert smoke.passed, smoke.output


@pytest.mark.integration
def test_t5_packages_for_the_pi4_with_an_int8_merged_decoder(tmp_path: Path) -> None:
    """T5 (text to text) for the Pi 4: int8-dynamic on both components; the merged decoder's If branches,
    which the dynamic quantizer leaves alone, get quantized through its two unmerged graphs."""
    ctx = package("sample:tiny-t5", _settings("rpi4", tmp_path / "dist"))
    assert ctx.io.modality == "text" and ctx.recipe_name == "int8-dynamic"
    decoder = next(c for c in ctx.components if c.name == "decoder")
    assert decoder.recipe is not None and decoder.recipe.quantized_nodes > 0 and decoder.recipe.params["merged"]
    assert ctx.accuracy.more["token_agreement"] >= 0.9
    smoke = run_smoke(ctx.archive)
    assert smoke.passed, smoke.output


@pytest.mark.integration
def test_check_shows_components_and_refuses_unknown_ones(tmp_path: Path) -> None:
    result = check("sample:tiny-whisper", _settings("rpi5", tmp_path, budget="100MiB"), PackageOptions(measure=False))
    assert result.memory is not None
    assert not result.memory.fits   # the estimate's high side (about 150 MiB) is over 100 MiB
    assert set(result.memory.components or {}) == {"encoder", "decoder"}
    with pytest.raises(PackagerError, match="its components are encoder, decoder") as e:
        package("sample:tiny-whisper", _settings("rpi5", tmp_path / "dist", "vision=int4"))
    assert e.value.code == ExitCode.USAGE
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"prompt": "a", "expected": "b"}\n')
    with pytest.raises(PackagerError, match="not an encoder-decoder's generations") as e:
        package("sample:tiny-whisper", _settings("rpi5", tmp_path / "dist"), PackageOptions(eval_file=str(cases)))
    assert e.value.code == ExitCode.BAD_INPUT
    assert not (tmp_path / "dist").exists()
