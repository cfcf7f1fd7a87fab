"""A multimodal Gemma 3n with an audio encoder, packaged end to end (issue 20, item 4): the bundle ships the audio
encoder (model/encoders/audio.onnx, runtimes/eclass_encoders.py), and `run.py --audio CLIP.wav` reads the clip as
transformers' Gemma3nAudioFeatureExtractor does (runtime/media_gemma3n.py, checked to the bit in
tests/test_gemma3n_audio.py), loads the encoder for it, puts [boa] + 188 placeholders + [eoa] after the BOS with the
encoder's rows there and at eoa (its own embedding, `end_row`), and continues with PyTorch's own greedy tokens for
that clip. verify judged the tone through the packaged pipeline, the smoke test passes on it, and the fit stage
estimated and measured the audio mode. The PyTorch reference runs in the `genai` environment (transformers 5.x;
Gemma3nForConditionalGeneration with its vision tower, timm's MobileNet-V5 at its default size, a stub: the
checkpoint has no vision_config, and its vision encoder is tests/test_eclass_encoders_3n.py's)."""

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

# Gemma 3n's layout in the tiny vocabulary of 512: text below it, embed_audio's 28 ids at its top (the end of audio
# the first, the placeholder the next, the padding the vocabulary's last); the begin of audio a text id
AUDIO_OFFSET, BOA = VOCAB - 28, 250
EOA, AUDIO = AUDIO_OFFSET, AUDIO_OFFSET + 1
NEW_TOKENS = 6

MAKE = r"""
import json, sys, torch
from pathlib import Path
from unittest import mock
from safetensors.torch import save_file
sys.path.insert(0, sys.argv[4])
import eclass_encoders   # first: it makes torchvision importable, which transformers imports
from transformers import Gemma3nAudioConfig, Gemma3nConfig, Gemma3nTextConfig
from transformers.models.gemma3n import modeling_gemma3n as m
folder, spec, ids = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
spec.pop("model_type"); spec.pop("architectures")
torch.manual_seed(0)
audio = Gemma3nAudioConfig(hidden_size=32, conf_num_attention_heads=2, conf_num_hidden_layers=2,
                           sscp_conv_channel_size=[8, 4], vocab_offset=ids["eoa_token_id"], vocab_size=28)
config = Gemma3nConfig(text_config=Gemma3nTextConfig(**spec), audio_config=audio, **ids)
real = m.AutoModel.from_config
stub = lambda c, **kw: torch.nn.Linear(1, 1) if c.model_type == "gemma3n_vision" else real(c, **kw)
with mock.patch.object(m.AutoModel, "from_config", stub):
    model = m.Gemma3nModel(config).eval()
with torch.no_grad():   # weights away from their initial ones (norm scales of 1, AltUp's output scale 0)
    for p in model.parameters():
        p.add_(0.2 * torch.randn_like(p))
keep = ("language_model.", "audio_tower.", "embed_audio.")
folder.mkdir(parents=True)
save_file({"model." + k: v.contiguous().clone() for k, v in model.state_dict().items() if k.startswith(keep)},
          str(folder / "model.safetensors"), metadata={"format": "pt"})
# an audio encoder only: no vision_config (transformers makes its default, timm's MobileNet-V5, the stub here), the
# tower's tensors absent
saved = config.to_dict() | {"architectures": ["Gemma3nForConditionalGeneration"]}
saved.pop("vision_config")
(folder / "config.json").write_text(json.dumps(saved))
"""

# PyTorch's greedy tokens for run.py's prompt ids and the clip's features (the device's pre-processing), the
# model's per-layer table as the graph's (the exporter's int8 rows times their scales)
REFERENCE = r"""
import json, sys
import numpy as np, torch
from unittest import mock
sys.path.insert(0, sys.argv[2])
from eclass_export import quantize_rows   # first: it makes torchvision importable, which transformers imports
from transformers import Gemma3nForConditionalGeneration
from transformers.models.gemma3n import modeling_gemma3n as m
real = m.AutoModel.from_config
stub = lambda c, **kw: torch.nn.Linear(1, 1) if c.model_type == "gemma3n_vision" else real(c, **kw)
with mock.patch.object(m.AutoModel, "from_config", stub):
    model = Gemma3nForConditionalGeneration.from_pretrained(sys.argv[1], dtype=torch.float32,
                                                            attn_implementation="eager").eval()
table = model.model.language_model.embed_tokens_per_layer
rows, scales = quantize_rows(table.weight.detach().float())
inputs = np.load(sys.argv[3])
ids, tokens = [int(i) for i in inputs["ids"]], []
audio = {"input_features": torch.from_numpy(inputs["features"][None]),
         "input_features_mask": torch.from_numpy(inputs["mask"][None])}
with torch.inference_mode():
    table.weight.copy_(rows.float() * scales)
    for _ in range(int(sys.argv[4])):
        tokens.append(int(torch.argmax(model(input_ids=torch.tensor([ids]), **audio).logits[0, -1])))
        ids.append(tokens[-1])
print(json.dumps(tokens))
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gemma3n-audio") / "tiny-gemma3n-audio"
    ids = {"boa_token_id": BOA, "eoa_token_id": EOA, "audio_token_id": AUDIO}
    code = Path(__file__).resolve().parents[1] / "packager" / "runtimes"
    subprocess.run([str(GENAI.python), "-c", MAKE, str(folder), json.dumps(ECLASS_3N), json.dumps(ids), str(code)],
                   check=True, capture_output=True, timeout=600)
    make_tokenizer(folder, int(ECLASS_3N["max_position_embeddings"]))
    return folder


@pytest.fixture(scope="module")
def bundle(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`packager package` for rpi5 at fp32 (the decoder and the encoder), extracted."""
    root = tmp_path_factory.mktemp("gemma3n-audio-bundle")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "packager", "package", str(source), "--target", "rpi5",
                           "--recipe", "fp32", "--out", str(root / "dist"), "--no-cache"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with tarfile.open(next((root / "dist").glob("*.tar.gz"))) as tar:
        tar.extractall(root / "bundle", filter="data")
    return next((root / "bundle").iterdir())


def test_run_py_reads_a_clip_with_gemma_3ns_audio_encoder_as_pytorch_does(source: Path, bundle: Path,
                                                                        tmp_path: Path) -> None:
    rt = runner()
    manifest = json.loads((bundle / "manifest.json").read_text())
    encoders = manifest["runtime"]["io"]["soft"]["encoders"]
    assert set(encoders) == {"audio"}
    audio = encoders["audio"]
    assert (audio["token_id"], audio["begin"], audio["end"], audio["end_row"]) == (AUDIO, BOA, EOA, True)
    assert audio["pre"]["processor"] == "gemma3n" and (bundle / "model" / audio["file"]).is_file()
    # verify: the tone through the packaged encoder and decoder against the fp32 export's (fp32: equal)
    media = manifest["accuracy"]["media"]["tone.wav"]
    assert media["token_agreement"] == 1.0 and media["logits_cosine"] > 0.9999
    wave = np.sin(np.arange(12000) / 16000 * 2 * np.pi * 330) * 0.4 + np.random.default_rng(1).normal(0, 0.05, 12000)
    rt.write_wav(tmp_path / "clip.wav", wave, 16000)
    ran = subprocess.run([sys.executable, "run.py", "--audio", str(tmp_path / "clip.wav"), "--prompt", "a b c",
                          "--max-new-tokens", str(NEW_TOKENS), "--json"], cwd=bundle, capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    result = json.loads(ran.stdout)
    ids = result["prompt_ids"]
    start = ids.index(BOA)
    assert ids[start:start + 190] == [BOA] + [AUDIO] * 188 + [EOA]   # the processor's 188, whatever the clip
    features, mask = rt.gemma3n_audio_features(rt.read_wav(tmp_path / "clip.wav", 16000), audio["pre"])
    np.savez(tmp_path / "inputs.npz", ids=np.array(ids), features=features, mask=mask)
    code = eclass.exporter_code(tmp_path)
    proc = subprocess.run([str(GENAI.python), "-c", REFERENCE, str(source), str(code), str(tmp_path / "inputs.npz"),
                           str(NEW_TOKENS)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["tokens"] == json.loads(proc.stdout.splitlines()[-1])
    # a clip past 30 s: the extractor's first 30 s, as transformers cuts it, and a note that says so
    rt.write_wav(tmp_path / "long.wav", np.resize(wave, 16000 * 31), 16000)
    long = subprocess.run([sys.executable, "run.py", "--audio", str(tmp_path / "long.wav"), "--prompt", "a b c",
                           "--max-new-tokens", "1"], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert long.returncode == 0, long.stderr[-2000:]
    assert "long.wav is 31.0 s long; the audio encoder hears its first 30 s" in long.stderr, long.stderr


def test_the_smoke_test_and_the_memory_record_cover_the_audio_mode(bundle: Path) -> None:
    smoke = subprocess.run([sys.executable, "smoke_test.py"], cwd=bundle, capture_output=True, text=True, timeout=600)
    assert smoke.returncode == 0 and "PASS" in smoke.stdout, smoke.stdout + smoke.stderr
    assert "tone.wav: 100.0% of the fp32 export's greedy tokens" in smoke.stdout, smoke.stdout
    memory = json.loads((bundle / "manifest.json").read_text())["memory"]
    graph = bundle / "model" / "encoders" / "audio.onnx"
    assert memory["on_demand"]["audio"] == {"file": "model/encoders/audio.onnx", "size_bytes": graph.stat().st_size}
    # the audio mode estimated from the graphs (the decoder held, the encoder run once on 30 s) and measured
    mode = memory["estimate"]["modes"]["audio"]
    assert 0 < mode["encoder_high_bytes"] and mode["low_bytes"] < mode["high_bytes"]
    measured = subprocess.run([sys.executable, "run.py", "--measure"], cwd=bundle, capture_output=True, text=True,
                              timeout=300)
    assert measured.returncode == 0, measured.stderr[-2000:]
    assert json.loads(measured.stdout.splitlines()[-1])["modes"]["audio"]["peak_bytes"] <= mode["high_bytes"]
