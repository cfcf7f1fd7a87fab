"""A multimodal Gemma 4's encoders as packager exports them (issue 20, item 4; packager/runtimes/eclass_encoders.py,
in the `genai` environment): built from a saved checkpoint's config.json and loaded from its encoder tensors alone,
each graph gives transformers' own soft tokens for an image and a clip, whatever the input's size: an image with
padding patches gives only its real tokens, a clip shorter than 30 s only its real frames'."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from packager.exporter_envs import GENAI, is_ready

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not is_ready(GENAI), reason="needs `packager env create genai`")]

RUNTIMES = Path(__file__).resolve().parents[1] / "packager" / "runtimes"

# A tiny Gemma4ForConditionalGeneration, saved, then its encoders loaded from the folder and exported; each graph
# run on inputs smaller than the export's (padding), against the saved model's get_image_features /
# get_audio_features on the unpadded input.
RUN = r"""
import json, sys, numpy as np, onnxruntime as ort, torch
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import eclass_encoders as E
from transformers import Gemma4Config, Gemma4ForConditionalGeneration, Gemma4TextConfig
folder, out = Path(sys.argv[1]), Path(sys.argv[1]) / "onnx"
out.mkdir()
torch.manual_seed(0)
text = Gemma4TextConfig(num_hidden_layers=2, hidden_size=48, intermediate_size=64, vocab_size=300,
                        vocab_size_per_layer_input=300, hidden_size_per_layer_input=8, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=16, global_head_dim=16, num_kv_shared_layers=0,
                        layer_types=["sliding_attention", "full_attention"], sliding_window=8)
vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=16,
              intermediate_size=64, patch_size=4, position_embedding_size=64, pooling_kernel_size=2)
audio = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, subsampling_conv_channels=[128, 4],
             output_proj_dims=40)
model = Gemma4ForConditionalGeneration(Gemma4Config(text_config=text, vision_config=vision, audio_config=audio))
model.eval().save_pretrained(folder)
made = E.export_encoders(E.load_encoders(folder), out)

# an image of 6 x 10 patches (15 tokens) in the export's 280 x 4, the rest padding at (-1, -1)
patches = 280 * 4
grid = np.stack(np.meshgrid(np.arange(10), np.arange(6), indexing="xy"), -1).reshape(-1, 2)
positions = np.full((1, patches, 2), -1, np.int64); positions[0, :60] = grid
pixels = np.zeros((1, patches, 48), np.float32); pixels[0, :60] = np.random.RandomState(0).rand(60, 48)
# a clip of 1,000 frames in the export's 3,000, the rest masked
frames = np.zeros((1, 3000, 128), np.float32); frames[0, :1000] = np.random.RandomState(1).randn(1000, 128)
mask = np.zeros((1, 3000), bool); mask[0, :1000] = True
with torch.no_grad():
    image = model.model.get_image_features(torch.from_numpy(pixels), torch.from_numpy(positions)).pooler_output
    image = (image[0] if isinstance(image, (tuple, list)) else image).numpy()
    clip = model.model.get_audio_features(torch.from_numpy(frames[:, :1000]), torch.from_numpy(mask[:, :1000]),
                                          return_dict=True)
    clip = clip.pooler_output[clip.attention_mask].numpy()
result = {"made": made}
for mode, feeds, want in (("image", [pixels, positions], image), ("audio", [frames, mask], clip)):
    session = ort.InferenceSession(str(out / made[mode]), providers=["CPUExecutionProvider"])
    got = session.run(None, dict(zip([i.name for i in session.get_inputs()], feeds)))[0]
    result[mode] = {"shape": list(got.shape), "want": list(want.shape),
                    "diff": float(np.abs(got - want).max()) if got.shape == want.shape else None,
                    "scale": float(np.abs(want).max())}
print(json.dumps(result))
"""


def test_the_encoders_give_transformers_soft_tokens(tmp_path: Path) -> None:
    proc = subprocess.run([str(GENAI.python), "-c", RUN, str(tmp_path), str(RUNTIMES)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["made"] == {"image": "vision.onnx", "audio": "audio.onnx"}
    # the image's 15 tokens, not the 280 of a full one; the clip's tokens of its 1,000 frames, not of 3,000
    assert result["image"]["shape"] == result["image"]["want"] == [15, 48]
    assert result["audio"]["shape"] == result["audio"]["want"] and result["audio"]["shape"][0] == 250
    for mode in ("image", "audio"):
        assert result[mode]["diff"] < 1e-4 * max(1.0, result[mode]["scale"]), (mode, result[mode])
