"""A multimodal E model's encoders in `packager plan` (issue 20, items 3 and 4): each kind's parameters as
transformers builds the module (counted on torch's meta device in the genai environment, transformers 5.x), each
mode's peak with its encoder loaded on demand beside the decoder, and the verdict on the worst mode."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from packager import plan_encoders
from packager.decoder_config import Keys
from packager.errors import ExitCode, PackagerError
from packager.exporter_envs import GENAI, is_ready
from packager.plan import plan
from packager.profiles import resolve_target as load_profile

CONFIGS = Path(__file__).resolve().parents[1] / "packager" / "data" / "configs"

# Sub-configs beside the defaults (E2B's): another width, depth and head layout each, so a rule that reads a key
# wrongly, or ignores it, counts another number than transformers.
SMALL = {
    "gemma4_vision": {"hidden_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
                      "head_dim": 24, "intermediate_size": 200, "patch_size": 8, "position_embedding_size": 50},
    "gemma4_audio": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "conv_kernel_size": 3,
                     "subsampling_conv_channels": [16, 8], "output_proj_dims": 48},
    "gemma3n_audio": {"hidden_size": 64, "conf_num_hidden_layers": 2, "conf_num_attention_heads": 4,
                      "conf_conv_kernel_size": 3, "sscp_conv_channel_size": [16, 8], "input_feat_size": 32,
                      "vocab_size": 10},
    "gemma3n_vision": {"architecture": "mobilenetv5_base", "vocab_size": 10},   # timm's smaller published tower
}
TEXT_HIDDEN = 80

COUNT = r"""
import json, sys, torch
from transformers.models.gemma4 import modeling_gemma4 as g4
from transformers.models.gemma3n import modeling_gemma3n as g3n
from transformers import AutoModel, Gemma3nVisionConfig
from transformers import Gemma4AudioConfig, Gemma4TextConfig, Gemma4VisionConfig, Gemma3nAudioConfig, Gemma3nTextConfig
BUILD = {"gemma4_vision": (Gemma4VisionConfig, g4.Gemma4VisionModel, g4.Gemma4MultimodalEmbedder, Gemma4TextConfig),
         "gemma4_audio": (Gemma4AudioConfig, g4.Gemma4AudioModel, g4.Gemma4MultimodalEmbedder, Gemma4TextConfig),
         "gemma3n_audio": (Gemma3nAudioConfig, g3n.Gemma3nAudioEncoder, g3n.Gemma3nMultimodalEmbedder,
                           Gemma3nTextConfig),
         "gemma3n_vision": (Gemma3nVisionConfig, AutoModel.from_config, g3n.Gemma3nMultimodalEmbedder,
                            Gemma3nTextConfig)}
cases, hidden = json.loads(sys.argv[1]), int(sys.argv[2])
out = []
for kind, sub in cases:
    config, encoder, embedder, text = BUILD[kind]
    with torch.device("meta"):
        c = config(**sub)
        parts = [encoder(c), embedder(c, text(hidden_size=hidden))]
    out.append(sum(p.numel() for m in parts for p in m.parameters()))
print(json.dumps(out))
"""


@pytest.mark.integration
@pytest.mark.skipif(not is_ready(GENAI), reason="needs `packager env create genai`")
def test_each_encoder_rule_counts_what_transformers_builds() -> None:
    cases = [(kind, sub) for kind in plan_encoders.RULES for sub in ({}, SMALL[kind])]
    proc = subprocess.run([str(GENAI.python), "-c", COUNT, json.dumps(cases), str(TEXT_HIDDEN)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counted = json.loads(proc.stdout.splitlines()[-1])
    ours = [plan_encoders.RULES[kind](Keys(sub, "config.json"), TEXT_HIDDEN).parameters for kind, sub in cases]
    assert ours == counted
    # E2B's: the text decoder's 4.63B and these make the 5.1B its card gives
    assert 460e6 < counted[0] + counted[2] < 490e6


def multimodal(tmp_path: Path, **subs: dict) -> Path:
    config = json.loads((CONFIGS / "Gemma-4-E2B.json").read_text())
    config.update(subs)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_each_mode_holds_the_decoder_and_its_encoder_and_the_verdict_is_the_worst(tmp_path: Path) -> None:
    """Gemma-4-E2B with its encoders: on the Pi 5 the text mode fits 8K as before, while the image and audio
    modes (the decoder at the context, and an encoder loaded for one input) do not; on the Orin Nano's CPU every
    mode fits, and the largest context of every mode is plan's."""
    config = multimodal(tmp_path, vision_config={"model_type": "gemma4_vision"},
                        audio_config={"model_type": "gemma4_audio"})
    text = plan(CONFIGS / "Gemma-4-E2B.json", load_profile("rpi5"), ["int4"], [8192])
    p = plan(config, load_profile("rpi5"), ["int4"], [8192])
    r, t = p.rows[0], text.rows[0]
    assert (r.peak_low_bytes, r.peak_high_bytes) == (t.peak_low_bytes, t.peak_high_bytes) and t.fits
    assert set(r.modes) == {"image", "audio"} and not r.fits
    for mode, (low, high) in r.modes.items():
        encoder = next(e for e in p.architecture.on_demand if e.mode == mode)
        # more than the decoder held plus the encoder's int8 weights, less than that with every allowance doubled
        weights = r.encoder_bytes[mode]
        assert weights == encoder.parameters and low > t.peak_low_bytes - t.activations_bytes + weights
        assert high < t.peak_high_bytes + 2 * weights + 2 * encoder.activations
    assert p.max_context_by_mode["text"] == text.max_context and p.max_context == {"int4": 0}
    assert p.max_context_by_mode["image"]["int4"] == 0
    assert any("loaded on demand" in n and "worst mode" in n for n in p.notes)
    orin = plan(config, load_profile("jetson-orin-nano-cpu"), ["int4"], [8192])
    assert orin.rows[0].fits
    worst = min(orin.max_context_by_mode[m]["int4"] for m in ("text", "image", "audio"))
    assert orin.max_context["int4"] == worst > 8192
    assert json.loads(json.dumps(orin.to_dict()))["max_context_by_mode"]["audio"]["int4"] >= worst


def test_gemma_3n_e2bs_vision_encoder_is_planned_by_its_timm_tower(tmp_path: Path) -> None:
    """Gemma-3n-E2B with its published vision_config (timm's mobilenetv5_300m_enc): 294M parameters and embed_vision's
    4.5M, an image of 256 soft tokens, and its mode's peak holds at least the session's load of twice the weights."""
    config = json.loads((CONFIGS / "Gemma-3n-E2B.json").read_text())
    config["vision_config"] = {"model_type": "gemma3n_vision"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    p = plan(tmp_path / "config.json", load_profile("jetson-orin-nano-cpu"), ["int4"], [4096])
    (vision,) = p.architecture.on_demand
    assert (vision.mode, vision.parameters, vision.tokens) == ("image", 294_126_912 + 4_460_544, 256)
    row = p.rows[0]
    low, high = row.modes["image"]
    assert high - row.peak_high_bytes >= 2 * row.encoder_bytes["image"] and low < high


def test_an_encoder_without_a_rule_is_named_not_counted(tmp_path: Path) -> None:
    """A MobileNet-V5 that timm does not publish (another architecture name, or model_args) has no rule: its mode is
    not planned, and the note says so."""
    config = multimodal(tmp_path, vision_config={"model_type": "gemma3n_vision", "architecture": "mobilenetv5"},
                        audio_config={"model_type": "gemma4_audio"})
    p = plan(config, load_profile("rpi5"), ["int4"], [2048])
    assert set(p.rows[0].modes) == {"audio"}
    assert any("gemma3n_vision" in n and "not planned" in n for n in p.notes)


@pytest.mark.parametrize(("sub", "key"), [
    ({"vision_config": [1, 2]}, "vision_config"),
    ({"audio_config": {"model_type": "gemma4_audio", "subsampling_conv_channels": [128]}},
     "subsampling_conv_channels"),
    ({"vision_config": {"model_type": "gemma4_vision", "hidden_size": "wide"}}, "hidden_size"),
])
def test_a_bad_encoder_config_is_one_sentence_naming_its_key(tmp_path: Path, sub: dict, key: str) -> None:
    with pytest.raises(PackagerError) as e:
        plan(multimodal(tmp_path, **sub), load_profile("rpi5"), ["int4"], [2048])
    assert e.value.code == ExitCode.BAD_INPUT and repr(key) in str(e.value) and "fix config.json" in str(e.value)
