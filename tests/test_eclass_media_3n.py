"""A multimodal Gemma 3n packaged end to end (issue 20, item 4): the bundle ships its vision encoder (timm's
MobileNet-V5, model/encoders/vision.onnx) and its audio encoder (audio.onnx; runtimes/eclass_encoders_3n.py), and
run.py reads an image as transformers' SiglipImageProcessorPil does and a clip as its Gemma3nAudioFeatureExtractor
does (runtime/media_gemma3n.py, to the bit in tests/test_gemma3n_image.py and tests/test_gemma3n_audio.py), loads
that encoder for it, puts [begin] + placeholders + [end] after the BOS with the encoder's rows there and at the end
token (its own embedding, `end_row`), and continues with PyTorch's own greedy tokens for that input. verify judged
the picture and the tone through the packaged pipeline, the smoke test passes on them, and the fit stage estimated
and measured both modes. The PyTorch reference runs in the `genai` environment (transformers 5.x, timm)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from packager import eclass
from packager.device_code import runner
from packager.exporter_envs import GENAI, is_ready
from tiny_decoders import ECLASS_3N, VOCAB, make_tokenizer

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not is_ready(GENAI), reason="needs `packager env create genai`")]

# Gemma 3n's layout in the tiny vocabulary of 512: text below 468, embed_vision's 16 ids (the end of image the first,
# the placeholder the next), then embed_audio's 28 (the end of audio, the placeholder, the padding the vocabulary's
# last); the begin tokens are text ids
VISION_OFFSET, AUDIO_OFFSET, BOI, BOA = VOCAB - 44, VOCAB - 28, 251, 250
EOI, IMAGE, EOA, AUDIO = VISION_OFFSET, VISION_OFFSET + 1, AUDIO_OFFSET, AUDIO_OFFSET + 1
IMAGE_TOKENS = 16   # 192 x 192 through the tiny tower: 12 x 12 pooled to 4 x 4 (768 x 768 gives E2B's 256)
NEW_TOKENS = 6

# The tiny vision tower: tests/test_eclass_encoders_3n.py's (timm's mobilenetv5_300m_enc class with blocks of its
# own), saved with the published checkpoints' flat preprocessor_config.json at 192 x 192
MAKE = r"""
import json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
from timm.models._efficientnet_builder import decode_arch_def
from transformers import (Gemma3nAudioConfig, Gemma3nAudioFeatureExtractor, Gemma3nConfig, Gemma3nTextConfig,
                          Gemma3nVisionConfig, SiglipImageProcessor)
from transformers.models.gemma3n import modeling_gemma3n as m
folder, spec, ids = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
spec.pop("model_type"); spec.pop("architectures")
torch.manual_seed(0)
audio = Gemma3nAudioConfig(hidden_size=32, conf_num_attention_heads=2, conf_num_hidden_layers=2,
                           sscp_conv_channel_size=[8, 4], vocab_offset=ids["eoa_token_id"], vocab_size=28)
blocks = decode_arch_def([["er_r1_k3_s2_e4_c8"], ["uir_r1_a3_k5_s2_e6_c8"],
                          ["uir_r1_a5_k5_s2_e6_c16", "mqa_r1_k3_h2_v2_s1_d8_c16", "uir_r1_a0_k0_s1_e2_c16"],
                          ["uir_r1_a5_k5_s2_e6_c16", "mqa_r1_k3_h2_s1_d8_c16", "uir_r1_a0_k0_s1_e2_c16"]])
vision = Gemma3nVisionConfig(model_args={"block_args": blocks, "stem_size": 8, "msfa_output_resolution": 4},
                             vocab_offset=ids["eoi_token_id"], vocab_size=16)
config = Gemma3nConfig(text_config=Gemma3nTextConfig(**spec), vision_config=vision, audio_config=audio,
                       vision_soft_tokens_per_image=16, **ids)
saved = json.dumps(config.to_dict() | {"architectures": ["Gemma3nForConditionalGeneration"]})
model = m.Gemma3nModel(config).eval()
with torch.no_grad():   # weights away from their initial ones (norm scales of 1, AltUp's output scale 0)
    for p in model.parameters():
        p.add_(0.2 * torch.randn_like(p))
folder.mkdir(parents=True)
save_file({"model." + k: v.contiguous().clone() for k, v in model.state_dict().items()},
          str(folder / "model.safetensors"), metadata={"format": "pt"})
(folder / "config.json").write_text(saved)
pre = Gemma3nAudioFeatureExtractor().to_dict() | SiglipImageProcessor(
    size={"height": 192, "width": 192}, do_normalize=False, resample=2).to_dict()
(folder / "preprocessor_config.json").write_text(json.dumps(pre | {"resample": 2}, default=lambda v: v.tolist()))
"""

# PyTorch's greedy tokens for run.py's prompt ids and the input as the device reads it (an image's pixel values, a
# clip's features), the model's per-layer table as the graph's (the exporter's int8 rows times their scales)
REFERENCE = r"""
import json, sys
import numpy as np, torch
from transformers import Gemma3nForConditionalGeneration
sys.path.insert(0, sys.argv[2])
from eclass_export import quantize_rows
model = Gemma3nForConditionalGeneration.from_pretrained(sys.argv[1], dtype=torch.float32,
                                                        attn_implementation="eager").eval()
table = model.model.language_model.embed_tokens_per_layer
rows, scales = quantize_rows(table.weight.detach().float())
inputs = np.load(sys.argv[3])
ids, tokens = [int(i) for i in inputs["ids"]], []
media = {k: torch.from_numpy(inputs[k][None]) for k in ("pixel_values", "input_features", "input_features_mask")
         if k in inputs.files}
with torch.inference_mode():
    table.weight.copy_(rows.float() * scales)
    for _ in range(int(sys.argv[4])):
        tokens.append(int(torch.argmax(model(input_ids=torch.tensor([ids]), **media).logits[0, -1])))
        ids.append(tokens[-1])
print(json.dumps(tokens))
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gemma3n-media") / "tiny-gemma3n-media"
    ids = {"boi_token_id": BOI, "eoi_token_id": EOI, "image_token_id": IMAGE, "boa_token_id": BOA,
           "eoa_token_id": EOA, "audio_token_id": AUDIO}
    proc = subprocess.run([str(GENAI.python), "-c", MAKE, str(folder), json.dumps(ECLASS_3N), json.dumps(ids)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    make_tokenizer(folder, int(ECLASS_3N["max_position_embeddings"]))
    return folder


@pytest.fixture(scope="module")
def bundle(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`packager package` for rpi5 at fp32 (the decoder and the encoders), extracted."""
    root = tmp_path_factory.mktemp("gemma3n-media-bundle")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "packager", "package", str(source), "--target", "rpi5",
                           "--recipe", "fp32", "--out", str(root / "dist"), "--no-cache"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with tarfile.open(next((root / "dist").glob("*.tar.gz"))) as tar:
        tar.extractall(root / "bundle", filter="data")
    return next((root / "bundle").iterdir())


def pytorch_tokens(source: Path, tmp_path: Path, ids: list[int], media: dict[str, np.ndarray]) -> list[int]:
    np.savez(tmp_path / "inputs.npz", ids=np.array(ids), **media)
    code = eclass.exporter_code(tmp_path)
    proc = subprocess.run([str(GENAI.python), "-c", REFERENCE, str(source), str(code), str(tmp_path / "inputs.npz"),
                           str(NEW_TOKENS)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tokens: list[int] = json.loads(proc.stdout.splitlines()[-1])
    return tokens


def run_py(bundle: Path, *args: str) -> dict:
    ran = subprocess.run([sys.executable, "run.py", *args, "--prompt", "a b c", "--max-new-tokens", str(NEW_TOKENS),
                          "--json"], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    result: dict = json.loads(ran.stdout)
    return result


def test_run_py_reads_an_image_with_gemma_3ns_vision_encoder_as_pytorch_does(source: Path, bundle: Path,
                                                                            tmp_path: Path) -> None:
    rt = runner()
    manifest = json.loads((bundle / "manifest.json").read_text())
    image = manifest["runtime"]["io"]["soft"]["encoders"]["image"]
    assert (image["token_id"], image["begin"], image["end"], image["end_row"]) == (IMAGE, BOI, EOI, True)
    assert image["pre"]["processor"] == "gemma3n" and image["pre"]["size"] == {"height": 192, "width": 192}
    media = manifest["accuracy"]["media"]["picture.png"]
    assert media["token_agreement"] == 1.0 and media["logits_cosine"] > 0.9999
    ys, xs = np.mgrid[0:150, 0:230]
    pixels = np.stack([ys, xs, (ys * xs) % 256], axis=-1).astype(np.uint8)
    rt.write_png(tmp_path / "photo.png", pixels)
    result = run_py(bundle, "--image", str(tmp_path / "photo.png"))
    ids = result["prompt_ids"]
    start = ids.index(BOI)
    assert ids[start:start + IMAGE_TOKENS + 2] == [BOI] + [IMAGE] * IMAGE_TOKENS + [EOI]
    values = rt.gemma3n_pixels(rt.read_image(tmp_path / "photo.png"), image["pre"])
    assert result["tokens"] == pytorch_tokens(source, tmp_path, ids, {"pixel_values": values})


def test_run_py_reads_a_clip_with_gemma_3ns_audio_encoder_as_pytorch_does(source: Path, bundle: Path,
                                                                        tmp_path: Path) -> None:
    rt = runner()
    manifest = json.loads((bundle / "manifest.json").read_text())
    audio = manifest["runtime"]["io"]["soft"]["encoders"]["audio"]
    assert (audio["token_id"], audio["begin"], audio["end"], audio["end_row"]) == (AUDIO, BOA, EOA, True)
    assert audio["pre"]["processor"] == "gemma3n" and (bundle / "model" / audio["file"]).is_file()
    # verify: the tone through the packaged encoder and decoder against the fp32 export's (fp32: equal)
    media = manifest["accuracy"]["media"]["tone.wav"]
    assert media["token_agreement"] == 1.0 and media["logits_cosine"] > 0.9999
    wave = np.sin(np.arange(12000) / 16000 * 2 * np.pi * 330) * 0.4 + np.random.default_rng(1).normal(0, 0.05, 12000)
    rt.write_wav(tmp_path / "clip.wav", wave, 16000)
    result = run_py(bundle, "--audio", str(tmp_path / "clip.wav"))
    ids = result["prompt_ids"]
    start = ids.index(BOA)
    assert ids[start:start + 190] == [BOA] + [AUDIO] * 188 + [EOA]   # the processor's 188, whatever the clip
    features, mask = rt.gemma3n_audio_features(rt.read_wav(tmp_path / "clip.wav", 16000), audio["pre"])
    assert result["tokens"] == pytorch_tokens(source, tmp_path, ids, {"input_features": features,
                                                                      "input_features_mask": mask})
    # a clip past 30 s: the extractor's first 30 s, as transformers cuts it, and a note that says so
    rt.write_wav(tmp_path / "long.wav", np.resize(wave, 16000 * 31), 16000)
    long = subprocess.run([sys.executable, "run.py", "--audio", str(tmp_path / "long.wav"), "--prompt", "a b c",
                           "--max-new-tokens", "1"], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert long.returncode == 0, long.stderr[-2000:]
    assert "long.wav is 31.0 s long; the audio encoder hears its first 30 s" in long.stderr, long.stderr


def test_the_smoke_test_and_the_memory_record_cover_both_modes(bundle: Path) -> None:
    smoke = subprocess.run([sys.executable, "smoke_test.py"], cwd=bundle, capture_output=True, text=True, timeout=600)
    assert smoke.returncode == 0 and "PASS" in smoke.stdout, smoke.stdout + smoke.stderr
    for name in ("picture.png", "tone.wav"):
        assert f"{name}: 100.0% of the fp32 export's greedy tokens" in smoke.stdout, smoke.stdout
    memory = json.loads((bundle / "manifest.json").read_text())["memory"]
    measured = subprocess.run([sys.executable, "run.py", "--measure"], cwd=bundle, capture_output=True, text=True,
                              timeout=300)
    assert measured.returncode == 0, measured.stderr[-2000:]
    peaks = json.loads(measured.stdout.splitlines()[-1])["modes"]
    for mode, name in (("image", "vision"), ("audio", "audio")):
        graph = bundle / "model" / "encoders" / f"{name}.onnx"
        assert memory["on_demand"][mode] == {"file": f"model/encoders/{name}.onnx",
                                             "size_bytes": graph.stat().st_size}
        # each mode estimated from the graphs (the decoder held, the encoder run once on its largest input), and
        # measured under the estimate's high side
        estimated = memory["estimate"]["modes"][mode]
        assert 0 < estimated["encoder_high_bytes"] and estimated["low_bytes"] < estimated["high_bytes"]
        assert peaks[mode]["peak_bytes"] <= estimated["high_bytes"], (mode, peaks[mode], estimated)
