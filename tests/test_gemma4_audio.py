"""Gemma 4's audio features on the device (targets/runtime/media_gemma4.py) against transformers'
Gemma4AudioFeatureExtractor, run in the `genai` environment (transformers 5.x) on generated sounds: the same
shapes, the same frame masks, the same log-mels within float32 rounding. And the device code imports neither
packager nor the Hugging Face stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from packager.device_code import runner
from packager.exporter_envs import GENAI, is_ready
from sounds import assert_same, isolated, pre_of
from sounds import reference as extractor_reference
from sounds import sounds as waves

needs_genai = pytest.mark.skipif(not is_ready(GENAI), reason="needs `packager env create genai`")

# Log-mels lie within [log(1e-3), ~10] for these sounds, where a float32 step is at most 1e-6. The device code
# keeps the extractor's types (float32 frames into the FFT, float64 from the filters on) and, with numpy 2, gives
# its very bits; numpy 1 (older devices) transforms in float64, which moves them by under 1e-6 (measured: 5e-7).
# 1e-4 allows that and another BLAS's summation order, and still catches any real difference: the wrong window,
# filters or padding move values by 1e-2 and more.
ATOL = 1e-4

# Figures other than the defaults, for every branch the extractor has but dithering (random): pre-emphasis in
# both flavours, per-bin normalisation, a scaled input, a longer window, the FFT "overdrive", a narrower band,
# another floor, and a cut that is no multiple of the padding multiple.
OTHER: dict[str, Any] = {"frame_length_ms": 25.0, "hop_length_ms": 12.5, "min_frequency": 125.0,
                         "max_frequency": 7600.0, "mel_floor": 1e-5, "preemphasis": 0.97, "input_scale_factor": 2.0,
                         "fft_overdrive": True, "per_bin_mean": [0.01 * i - 0.5 for i in range(128)],
                         "per_bin_stddev": [1.0 + 0.02 * i for i in range(128)]}
CALL = {"max_length": 100001, "pad_to_multiple_of": 64}
CONFIGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    "htk": (OTHER, CALL),
    "plain": ({**OTHER, "preemphasis_htk_flavor": False}, CALL),
}

# The child in the genai environment: every sound through the extractor as the processor calls it (one clip, a
# batch of one: a bare 1-D array fails inside transformers), its arrays into an .npz.
REFERENCE = r"""
import json, sys
import numpy as np
from transformers import Gemma4AudioFeatureExtractor
sounds, configs, out = np.load(sys.argv[1]), json.loads(sys.argv[2]), {}
for config, (init, call) in configs.items():
    extractor = Gemma4AudioFeatureExtractor(**init)
    for name in sounds.files:
        got = extractor([sounds[name]], **call)
        out[f"{config}/{name}/features"] = got["input_features"][0]
        out[f"{config}/{name}/mask"] = got["input_features_mask"][0]
np.savez(sys.argv[3], **out)
"""


def sounds() -> dict[str, np.ndarray]:
    """tests/sounds.py's waves, the shortest 0.0123 s (196 samples: one frame) and 0.005 s (80 samples: no frame
    at all)."""
    return waves(0.0123, 0.005)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    return extractor_reference(tmp_path_factory.mktemp("gemma4-audio"), REFERENCE, sounds(), CONFIGS)


@needs_genai
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("name", list(sounds()))
def test_the_features_and_mask_are_the_extractors(reference: dict[str, np.ndarray], config: str, name: str) -> None:
    got = runner().gemma4_audio_features(sounds()[name], pre_of(*CONFIGS[config]))
    assert_same(got, reference, f"{config}/{name}", ATOL)


@needs_genai
def test_what_the_comparison_covers(reference: dict[str, np.ndarray]) -> None:
    """The sounds reach the cases that differ from Whisper's features: a clip padded to a multiple of 128 samples
    (not to 30 s) whose last frames are masked and zeroed, a clip past 30 s cut to its first 480000 samples, a clip
    too short for a frame, and silence at the floor."""
    features, mask = reference["default/chirp/features"], reference["default/chirp/mask"]
    assert len(mask) == 230 and not mask[-1] and mask[:-1].all() and not features[-1].any()
    assert reference["default/long/features"].shape == reference["default/noise/features"].shape == (2999, 128)
    assert reference["default/shorter/features"].shape == (0, 128)
    assert np.isclose(reference["default/click/features"][0], np.log(1e-3)).all()
    cut, _ = runner().gemma4_audio_features(sounds()["long"][:480000], pre_of({}, {}))
    np.testing.assert_allclose(cut, reference["default/long/features"], rtol=0, atol=ATOL)


def test_the_device_code_imports_no_packager_torch_or_transformers(tmp_path: Path) -> None:
    assert isolated("gemma4_audio_features", tmp_path) == {"shape": [99, 128], "valid": 99, "loaded": []}
