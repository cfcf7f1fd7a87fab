"""A multimodal Gemma 3n's encoders as packager exports them (packager/runtimes/eclass_encoders_3n.py's
export_checkpoint_3n, in the `genai` environment): built from a saved checkpoint's config.json and loaded from their
tensors alone, each graph gives the rows transformers' own Gemma3nModel.forward puts in the prompt. The vision
encoder's (timm's MobileNet-V5, tiny): an image's soft tokens at its placeholders and the end-of-image token's hard
embedding (embed_vision's) at eoi. The audio encoder's: at the 188 placeholders (the clip's soft tokens, then the
padding embedding) and at the end-of-audio token (embed_audio's hard embedding), for short clips padded to the
longest and for the longest itself."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from packager.exporter_envs import GENAI, is_ready

RUNTIMES = Path(__file__).resolve().parents[1] / "packager" / "runtimes"

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not is_ready(GENAI), reason="needs `packager env create genai`")]

# A tiny Gemma3nModel, saved as a Gemma3nForConditionalGeneration checkpoint holds it, with the published config's
# preprocessor_config.json (the feature extractor's and the image processor's figures in one flat file); its encoders
# exported from the folder, then each graph against the inputs_embeds that the model's forward hands its language
# model, on the same input. The ids are laid out as Gemma 3n's, in a vocabulary of 300: text below 256 (the
# per-layer table's rows; the begin of image 251, of audio 250), embed_vision's 16 from 256 (the end of image 256,
# the placeholder 257), embed_audio's 28 from 272 (the end of audio 272, the placeholder 273, the padding 299, the
# text vocabulary's last).
# The vision tower is timm's mobilenetv5_300m_enc, the published one's class, with blocks of its own (model_args'
# block_args, decoded from timm's block strings as the published ones are): its stem, one block a stage for the
# first two stages, then for the last two a stride-2 inverted residual, a multi-query attention (the third stage's
# with its keys and values at half the resolution, as the published) and an inverted residual, 8 to 16 channels
# (the published: 64 to 1,280, 84 blocks); the fusion adapter's output, 2,048 channels, is the encoder's (fixed). At
# 192 x 192 its stages end at 12 x 12 and 6 x 6, fused at 12 x 12 and pooled to 4 x 4: 16 soft tokens, as 768 x 768
# gives 48 x 48 pooled to 16 x 16 (256). 155K parameters in the tower, 102K in embed_vision.
RUN = r"""
CLIPS = [5, 97, 993, 1000]
import json, sys, time, numpy as np, onnxruntime as ort, torch
from pathlib import Path
from safetensors.torch import save_file
sys.path.insert(0, sys.argv[2])
import eclass_encoders as E
from timm.models._efficientnet_builder import decode_arch_def
from transformers import (Gemma3nAudioConfig, Gemma3nAudioFeatureExtractor, Gemma3nConfig, Gemma3nTextConfig,
                          Gemma3nVisionConfig, SiglipImageProcessor)
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
blocks = decode_arch_def([["er_r1_k3_s2_e4_c8"], ["uir_r1_a3_k5_s2_e6_c8"],
                          ["uir_r1_a5_k5_s2_e6_c16", "mqa_r1_k3_h2_v2_s1_d8_c16", "uir_r1_a0_k0_s1_e2_c16"],
                          ["uir_r1_a5_k5_s2_e6_c16", "mqa_r1_k3_h2_s1_d8_c16", "uir_r1_a0_k0_s1_e2_c16"]])
vision = Gemma3nVisionConfig(model_args={"block_args": blocks, "stem_size": 8, "msfa_output_resolution": 4},
                             vocab_offset=256, vocab_size=16)
config = Gemma3nConfig(text_config=text, vision_config=vision, audio_config=audio, vision_soft_tokens_per_image=16,
                       boi_token_id=251, eoi_token_id=256, image_token_id=257,
                       boa_token_id=250, eoa_token_id=272, audio_token_id=273)
# as saved before timm's builder fills the block arguments in with its own (unsaveable) objects
saved = json.dumps(config.to_dict() | {"architectures": ["Gemma3nForConditionalGeneration"]})
model = m.Gemma3nModel(config).eval()
with torch.no_grad():   # weights away from their initial ones (norm scales of 1, per_dim_scale 0, layer scales 1e-5)
    for p in model.parameters():
        p.add_(0.1 * torch.randn_like(p))
save_file({"model." + k: v.contiguous().clone() for k, v in model.state_dict().items()},
          str(folder / "model.safetensors"), metadata={"format": "pt"})
(folder / "config.json").write_text(saved)
# the published checkpoints' flat preprocessor_config.json; a figure of each not the default, to see it read
pre = Gemma3nAudioFeatureExtractor(min_frequency=100.0).to_dict() | SiglipImageProcessor(
    size={"height": 192, "width": 192}, do_normalize=False, resample=2).to_dict()
(folder / "preprocessor_config.json").write_text(json.dumps(pre | {"resample": 2}, default=lambda v: v.tolist()))

start = time.time()
spec = E.export_checkpoint(folder, Path(sys.argv[1]) / "onnx")
seconds = time.time() - start
result = {"spec": spec, "seconds": seconds}
captured = {}
model.language_model.register_forward_pre_hook(lambda mod, args, kw: captured.update(kw), with_kwargs=True)
embed_text = lambda i: model.language_model.embed_tokens(torch.tensor([i]))[0].detach().numpy()

def graph(mode):
    path = Path(sys.argv[1]) / "onnx" / spec[mode]["file"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    result[mode] = {"inputs": [[i.name, i.shape, i.type] for i in session.get_inputs()],
                    "outputs": [[o.name, o.shape] for o in session.get_outputs()], "mib": path.stat().st_size / 2**20}
    return session

# images: the image processor's pixel values of a picture (uint8, 240 x 320), and two of random values
session = graph("image")
picture = np.random.RandomState(0).randint(0, 256, (240, 320, 3), np.uint8)
processed = SiglipImageProcessor.from_pretrained(folder)(picture, return_tensors="pt")["pixel_values"]
images = {"picture": processed} | {f"random{i}": torch.rand(1, 3, 192, 192, generator=torch.Generator().manual_seed(i))
                                   for i in (1, 2)}
ids = [2, 251] + [257] * 16 + [256, 10, 11, 12]
for name, pixels in images.items():
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]), pixel_values=pixels)
    want = captured["inputs_embeds"][0, 2:19].numpy()   # the placeholders' rows, then the end of image's
    got = session.run(None, {"pixel_values": pixels.numpy()})[0]
    result["image"][name] = {"shape": list(got.shape), "pixels": list(pixels.shape),
                             "diff": float(np.abs(got - want).max()), "scale": float(np.abs(want).max()),
                             # the end of image's row is embed_vision's, not the text table's
                             "end_vs_text": float(np.abs(want[16] - embed_text(256)).max())}

session = graph("audio")
longest = Gemma3nAudioFeatureExtractor()(np.zeros(480000, np.float32), return_tensors="np")["input_features"].shape[1]
frames = session.get_inputs()[0].shape[1]
result["audio"] |= {"frames": frames, "extractor_frames": longest}
ids = [2, 250] + [273] * 188 + [272, 10, 11, 12]
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
    result["audio"][str(n)] = {"shape": list(got.shape), "diff": float(np.abs(got - want).max()),
                               "scale": float(np.abs(want).max()),
                               # past the clip's soft tokens the padding embedding, at each placeholder
                               "padding_rows": int((np.abs(want[:188] - want[187]).max(-1) == 0).sum()),
                               "end_vs_text": float(np.abs(want[188] - embed_text(272)).max())}
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("gemma3n-encoders")
    proc = subprocess.run([str(GENAI.python), "-c", RUN, str(folder), str(RUNTIMES)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    assert list(result["spec"]) == ["image", "audio"]
    return result


def test_the_gemma_3n_vision_encoder_gives_the_rows_transformers_puts_in_the_prompt(exported: dict[str, Any]) -> None:
    image = exported["spec"]["image"]
    assert {k: v for k, v in image.items() if k != "pre"} == {
        "file": "encoders/vision.onnx", "token_id": 257, "begin": 251, "end": 256, "end_row": True}
    # the saved image processor's figures (the size and the two others not SiglipImageProcessor's defaults)
    assert image["pre"] == {"processor": "gemma3n", "size": {"height": 192, "width": 192}, "do_resize": True,
                            "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": False,
                            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True}
    graph = exported["image"]
    # one image at the processor's size in (the image processor's pixel values), 16 soft tokens and eoi's row out
    assert graph["inputs"] == [["pixel_values", [1, 3, 192, 192], "tensor(float)"]]
    assert graph["outputs"] == [["soft_tokens", [17, 32]]]
    for name in ("picture", "random1", "random2"):
        rows = graph[name]
        assert rows["pixels"] == [1, 3, 192, 192] and rows["shape"] == [17, 32], (name, rows)
        assert rows["diff"] < 1e-4 * max(1.0, rows["scale"]), (name, rows)
        assert rows["end_vs_text"] > 0.1, (name, rows)


def test_the_gemma_3n_audio_encoder_gives_the_rows_transformers_puts_in_the_prompt(exported: dict[str, Any]) -> None:
    audio = exported["spec"]["audio"]
    assert {k: v for k, v in audio.items() if k != "pre"} == {
        "file": "encoders/audio.onnx", "token_id": 273, "begin": 250, "end": 272, "end_row": True}
    pre = audio["pre"]
    assert pre["processor"] == "gemma3n" and pre["min_frequency"] == 100.0   # the saved figure, not the default
    assert (pre["frame_length"], pre["hop_length"], pre["sampling_rate"], pre["feature_size"]) == (512, 160, 16000, 128)
    assert not {"size", "image_mean", "do_normalize"} & set(pre)   # the flat file's image figures are not the clip's
    result = exported["audio"]
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
