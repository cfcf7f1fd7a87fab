"""A multimodal Gemma 3n's audio encoder as packager exports it (packager/runtimes/eclass_encoders.py's
export_checkpoint_3n, in the `genai` environment): built from a saved checkpoint's config.json and loaded from its
encoder tensors alone, its graph gives the rows transformers' own Gemma3nModel.forward puts in the prompt: at the
188 placeholders (the clip's soft tokens, then the padding embedding) and at the end-of-audio token (embed_audio's
hard embedding), for short clips padded to the longest and for the longest itself. Its vision encoder is not
exported, and the export says why."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from packager import decoder_config, eclass
from packager.exporter_envs import GENAI, is_ready

RUNTIMES = Path(__file__).resolve().parents[1] / "packager" / "runtimes"

# A tiny Gemma3nModel (its vision tower, timm's, a stub: timm needs torchvision, which does not import beside the
# environment's CPU torch), saved as a Gemma3nForConditionalGeneration checkpoint holds it (no vision_config: the
# exporter makes its default, the tower's tensors absent); its audio encoder exported from the folder, then the
# graph against the inputs_embeds that the model's forward hands its language model, on the same clip. The ids are
# laid out as Gemma 3n's, in a vocabulary of 300: text below 256 (the per-layer table's rows), embed_audio's 28 from
# 272 (the end of audio 272, the placeholder 273, the padding 299, the text vocabulary's last).
RUN = r"""
CLIPS = [5, 97, 993, 1000]
import json, sys, time, numpy as np, onnxruntime as ort, torch
from pathlib import Path
from unittest import mock
from safetensors.torch import save_file
sys.path.insert(0, sys.argv[2])
import eclass_encoders as E
from transformers import Gemma3nAudioConfig, Gemma3nAudioFeatureExtractor, Gemma3nConfig, Gemma3nTextConfig
from transformers.models.gemma3n import modeling_gemma3n as m
folder = Path(sys.argv[1]) / "gemma3n"
folder.mkdir()
torch.manual_seed(0)
text = Gemma3nTextConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, vocab_size=300,
                         vocab_size_per_layer_input=256, hidden_size_per_layer_input=4, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, num_kv_shared_layers=0, sliding_window=8,
                         layer_types=["sliding_attention", "full_attention"], laurel_rank=4, altup_num_inputs=2,
                         activation_sparsity_pattern=[0.0, 0.0], pad_token_id=0, bos_token_id=2, eos_token_id=1)
audio = Gemma3nAudioConfig(hidden_size=32, conf_num_attention_heads=2, conf_num_hidden_layers=2,
                           sscp_conv_channel_size=[8, 4], vocab_offset=272, vocab_size=28)
config = Gemma3nConfig(text_config=text, audio_config=audio, boa_token_id=250, eoa_token_id=272, audio_token_id=273)
stub = lambda c, **kw: torch.nn.Linear(1, 1) if c.model_type == "gemma3n_vision" else real(c, **kw)
real = m.AutoModel.from_config
with mock.patch.object(m.AutoModel, "from_config", stub):
    model = m.Gemma3nModel(config).eval()
with torch.no_grad():   # weights away from their initial ones (norm scales of 1, per_dim_scale 0)
    for p in model.parameters():
        p.add_(0.1 * torch.randn_like(p))
keep = ("language_model.", "audio_tower.", "embed_audio.")
save_file({"model." + k: v.contiguous().clone() for k, v in model.state_dict().items() if k.startswith(keep)},
          str(folder / "model.safetensors"), metadata={"format": "pt"})
saved = config.to_dict()
saved.pop("vision_config")
(folder / "config.json").write_text(json.dumps(saved | {"architectures": ["Gemma3nForConditionalGeneration"]}))
# the published checkpoints' flat preprocessor_config.json; one figure not the default, to see it read
Gemma3nAudioFeatureExtractor(min_frequency=100.0).save_pretrained(folder)

start = time.time()
spec = E.export_checkpoint(folder, Path(sys.argv[1]) / "onnx")
seconds = time.time() - start
graph = Path(sys.argv[1]) / "onnx" / spec["audio"]["file"]
session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
longest = Gemma3nAudioFeatureExtractor()(np.zeros(480000, np.float32), return_tensors="np")["input_features"].shape[1]
frames = session.get_inputs()[0].shape[1]

captured = {}
model.language_model.register_forward_pre_hook(lambda mod, args, kw: captured.update(kw), with_kwargs=True)
ids = [2, 250] + [273] * 188 + [272, 10, 11, 12]
result = {"spec": spec, "frames": frames, "extractor_frames": longest, "seconds": seconds,
          "inputs": [[i.name, i.shape, i.type] for i in session.get_inputs()],
          "outputs": [[o.name, o.shape] for o in session.get_outputs()], "mib": graph.stat().st_size / 2**20}
for n in CLIPS + [frames]:
    features = np.zeros((1, frames, 128), np.float32)
    features[0, :n] = np.random.RandomState(n).randn(n, 128)
    mask = np.zeros((1, frames), bool)
    mask[0, :n] = True
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]), input_features=torch.from_numpy(features[:, :n]),
              input_features_mask=torch.from_numpy(mask[:, :n]))
    want = captured["inputs_embeds"][0, 2:191].numpy()   # the placeholders' rows, then the end of audio's
    got = session.run(None, {"input_features": features, "input_features_mask": mask})[0]
    result[str(n)] = {"shape": list(got.shape), "diff": float(np.abs(got - want).max()),
                    "scale": float(np.abs(want).max()),
                    # past the clip's soft tokens the padding embedding, at each placeholder
                    "padding_rows": int((np.abs(want[:188] - want[187]).max(-1) == 0).sum()),
                    # the end of audio's row is embed_audio's, not the text table's
                    "end_vs_text": float(np.abs(want[188] - model.language_model.embed_tokens(
                        torch.tensor([272]))[0].detach().numpy()).max())}
print(json.dumps(result))
"""


@pytest.mark.integration
@pytest.mark.skipif(not is_ready(GENAI), reason="needs `packager env create genai`")
def test_the_gemma_3n_audio_encoder_gives_the_rows_transformers_puts_in_the_prompt(tmp_path: Path) -> None:
    proc = subprocess.run([str(GENAI.python), "-c", RUN, str(tmp_path), str(RUNTIMES)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    spec = result["spec"]
    # the audio encoder only: the vision encoder (timm's MobileNet-V5) is not exported
    assert list(spec) == ["audio"]
    audio = spec["audio"]
    assert {k: v for k, v in audio.items() if k != "pre"} == {
        "file": "encoders/audio.onnx", "token_id": 273, "begin": 250, "end": 272, "end_row": True}
    pre = audio["pre"]
    assert pre["processor"] == "gemma3n" and pre["min_frequency"] == 100.0   # the saved figure, not the default
    assert (pre["frame_length"], pre["hop_length"], pre["sampling_rate"], pre["feature_size"]) == (512, 160, 16000, 128)
    # the feature extractor's longest clip (30 s), the graph's input; 188 placeholders' rows and the end's
    assert result["frames"] == result["extractor_frames"] == 2997
    assert result["inputs"] == [["input_features", [1, 2997, 128], "tensor(float)"],
                                ["input_features_mask", [1, 2997], "tensor(bool)"]]
    assert result["outputs"] == [["soft_tokens", [189, 32]]]
    # clips of 1 s and less, one whose last soft token reads the subsampling's rows past the clip (993 frames: 249
    # frames subsampled, every 4th a soft token), one whose last does not (1,000), and the longest
    for n in (5, 97, 993, 1000, 2997):
        clip = result[str(n)]
        assert clip["shape"] == [189, 32]
        assert clip["diff"] < 1e-4 * max(1.0, clip["scale"]), (n, clip)
        assert clip["end_vs_text"] > 0.1
        halved = math.ceil(math.ceil(n / 2) / 2)   # both convolutions halve the frames; every 4th a soft token
        soft = math.ceil(halved / 4)
        assert clip["padding_rows"] == (188 - soft if soft < 188 else 1), (n, clip)   # the last row itself


def test_the_export_says_why_a_gemma_3n_bundle_takes_no_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A multimodal Gemma 3n's export (the exporter itself stood in for) says in one line that its vision encoder is
    not exported and why; a Gemma 4's, whose vision encoder is, does not."""
    lines: list[str] = []
    cases: list[tuple[str, dict[str, Any]]] = [("gemma3n", {"audio": {}}), ("gemma4", {"image": {}, "audio": {}})]
    for model_type, encoders in cases:
        folder = tmp_path / model_type
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({
            "model_type": model_type, "text_config": {"model_type": f"{model_type}_text",
                                                      "hidden_size_per_layer_input": 4},
            "vision_config": {"model_type": f"{model_type}_vision"},
            "audio_config": {"model_type": f"{model_type}_audio"}}))
        monkeypatch.setattr(eclass, "export", lambda *args, e=encoders, **kw: {"soft_tokens": True, "encoders": e})
        lines.append("\n".join(line for line in collect(folder, tmp_path) if "MobileNet" in line))
    assert lines[0] == decoder_config.VISION_3N and "timm" in lines[0] and "torchvision" in lines[0]
    assert lines[1] == ""


def collect(folder: Path, tmp_path: Path) -> list[str]:
    said: list[str] = []
    eclass.export_folder(folder, tmp_path / "out", tmp_path / "work", said.append)
    return said
