"""Gemma 3n's audio features on the device (targets/runtime/media_gemma3n.py) against transformers'
Gemma3nAudioFeatureExtractor, run in the `genai` environment (transformers 5.x) on generated sounds: the same
shapes, the same frame masks, the same log-mels within float32 rounding, with the extractor's defaults and with other
figures for each of its branches. And the device code imports neither packager nor the Hugging Face stack."""

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

# As tests/test_gemma4_audio.py: the device code keeps the extractor's types (float32 samples, window and FFT,
# float64 from the filters on) and, with numpy 2, gives its very bits; numpy 1 transforms in float64 (a float32
# rounding apart). Log-mels lie within [log(1e-5), ~10] here; 1e-4 allows numpy 1 and another BLAS's summation
# order, and still catches the wrong window, filters, floor or framing, which move values by 1e-2 and more.
ATOL = 1e-4

# Figures other than the defaults, for every branch the extractor has but dithering (random): a shorter window
# and another hop, no FFT "overdrive", another band and floor, a scaled input, per-bin normalisation, a padding
# value that shows (the extractor does not zero the padded frames), and a padding multiple longer than a frame
# (so that frames start in the padding and the mask has invalid frames) with a cut that is no multiple of it.
# Then the three pre-emphases: HTK's (the default, with these figures), the plain one, and none; the plain one at
# an odd sampling rate, where the filters' bins (rate / fft apart) are not Gemma 4's (to rate // 2).
OTHER: dict[str, Any] = {"frame_length_ms": 25.0, "hop_length_ms": 12.5, "fft_overdrive": False,
                         "min_frequency": 60.0, "max_frequency": 7000.0, "mel_floor": 1e-3, "input_scale_factor": 2.0,
                         "padding_value": 0.25, "per_bin_mean": [0.01 * i - 0.5 for i in range(128)],
                         "per_bin_stddev": [1.0 + 0.02 * i for i in range(128)]}
CALL = {"max_length": 100001, "pad_to_multiple_of": 3000}
CONFIGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    "htk": (OTHER, CALL),
    "plain": ({**OTHER, "preemphasis": 0.9, "preemphasis_htk_flavor": False, "sampling_rate": 11025,
               "max_frequency": 5000.0}, CALL),
    "none": ({**OTHER, "preemphasis": 0.0}, CALL),
}

# The child in the genai environment: every sound through the extractor as the processor calls it (one clip, a
# batch of one), its arrays into an .npz.
REFERENCE = r"""
import json, sys
import numpy as np
from transformers import Gemma3nAudioFeatureExtractor
sounds, configs, out = np.load(sys.argv[1]), json.loads(sys.argv[2]), {}
for config, (init, call) in configs.items():
    extractor = Gemma3nAudioFeatureExtractor(**init)
    for name in sounds.files:
        got = extractor([sounds[name]], **call)
        out[f"{config}/{name}/features"] = got["input_features"][0]
        out[f"{config}/{name}/mask"] = got["input_features_mask"][0]
np.savez(sys.argv[3], **out)
"""


def sounds() -> dict[str, np.ndarray]:
    """tests/sounds.py's waves, the shortest 0.035 s (560 samples, padded to 640: one frame) and 0.02 s (320
    samples: no whole frame)."""
    return waves(0.035, 0.02)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    return extractor_reference(tmp_path_factory.mktemp("gemma3n-audio"), REFERENCE, sounds(), CONFIGS)


@needs_genai
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("name", list(sounds()))
def test_the_features_and_mask_are_the_extractors(reference: dict[str, np.ndarray], config: str, name: str) -> None:
    got = runner().gemma3n_audio_features(sounds()[name], pre_of(*CONFIGS[config]))
    assert_same(got, reference, f"{config}/{name}", ATOL)


@needs_genai
def test_what_the_comparison_covers(reference: dict[str, np.ndarray]) -> None:
    """The sounds reach the cases where Gemma 3n's extractor differs from Gemma 4's: no semicausal padding (a 30 s
    clip has 2997 frames, Gemma 4's 2999), a clip past 30 s cut to its first 480000 samples, one frame from 640
    samples and none from 384, silence at the floor of 1e-5 (a maximum, not an addition), and a mask of the frames
    that start in the clip, whose padded frames keep their features (not zeroed)."""
    assert reference["default/long/features"].shape == reference["default/noise/features"].shape == (2997, 128)
    assert reference["default/long/mask"].all() and reference["default/chirp/mask"].all()   # 36800 -> 36864: 228
    assert reference["default/chirp/features"].shape == (228, 128)
    assert reference["default/short/features"].shape == (1, 128) and reference["default/short/mask"].all()
    assert reference["default/shorter/features"].shape == (0, 128)
    assert (reference["default/click/features"][0] == np.float32(np.log(1e-5))).all()
    cut, _ = runner().gemma3n_audio_features(sounds()["long"][:480000], pre_of({}, {}))
    np.testing.assert_allclose(cut, reference["default/long/features"], rtol=0, atol=ATOL)
    # 16000 samples padded to 18000 with 0.25: 400-sample frames every 200 from 0, valid while they start before
    # sample 16000; the padded ones are the padding's features, not zeros
    features, mask = reference["htk/sine/features"], reference["htk/sine/mask"]
    assert len(mask) == (18000 - 401) // 200 + 1 == 88 and mask.sum() == 80 and mask[:80].all()
    assert np.isfinite(features).all() and features[~mask].any()
    assert reference["htk/long/features"].shape == ((102000 - 401) // 200 + 1, 128)   # cut to 100001 -> 102000


def test_the_device_code_imports_no_packager_torch_or_transformers(tmp_path: Path) -> None:
    assert isolated("gemma3n_audio_features", tmp_path) == {"shape": [97, 128], "valid": 97, "loaded": []}
