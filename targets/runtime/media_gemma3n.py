"""Gemma 3n's audio encoder inputs on the device, in numpy: the log-mel features and frame mask of transformers 5.x's
Gemma3nAudioFeatureExtractor for one clip as the processor passes it (a one-item batch).

The extractor is Gemma 4's (media_gemma4.py, whose helpers this module calls: the cut and padding, dither and input
scale, framing with its extra sample and pre-emphasis, HTK filters without area normalisation, magnitude through a
zero-padded real FFT, per-bin normalisation), with other defaults and these differences:

- defaults: a 32 ms window (512 samples) every 10 ms, a 1024-point FFT ("fft_overdrive" on), filters from 125 to
  7600 Hz, HTK pre-emphasis 0.97, a floor of 1e-5;
- no "semicausal" padding: the first frame starts at the clip's first sample, so a clip of n samples (padded to n')
  has (n' - frame - 1) // hop + 1 frames, 2997 for 30 s;
- the filters are its own create_fb_matrix's (float32 bin frequencies rate / fft apart, edges through math.log10)
  and the periodic Hann window is computed in float32, both as there;
- the floor is a maximum (log(max(mel, floor))), not an addition;
- a frame is valid when its first sample is the clip's (not its last), and the features of invalid frames are kept
  as computed, not zeroed: the padding (padding_value) shows in them. With the default padding (to a multiple of 128
  samples, under a frame's length) every frame of one clip is valid.
"""

from typing import Any

import numpy as np

from .media_gemma4 import _dithered, _frames, _padded, _per_bin, gemma4_sizes, htk_mel_filters

# Gemma3nAudioFeatureExtractor's figures (its __init__ and __call__ defaults) by preprocessor_config.json's names.
# A config's "frame_length", "hop_length" and "fft_length" (samples) are ignored, as the extractor ignores them.
GEMMA3N_AUDIO_DEFAULTS: dict[str, Any] = {
    "sampling_rate": 16000, "feature_size": 128, "frame_length_ms": 32.0, "hop_length_ms": 10.0,
    "min_frequency": 125.0, "max_frequency": 7600.0, "mel_floor": 1e-5, "preemphasis": 0.97,
    "preemphasis_htk_flavor": True, "fft_overdrive": True, "dither": 0.0, "input_scale_factor": 1.0,
    "per_bin_mean": None, "per_bin_stddev": None, "padding_value": 0.0, "max_length": 480000, "truncation": True,
    "pad_to_multiple_of": 128,
}


def gemma3n_window(frame: int) -> np.ndarray:
    """The periodic Hann window as the extractor computes it, in float32 throughout (np.hanning's float64 values
    rounded to float32 differ from it in the last bit)."""
    steps = np.arange(frame, dtype=np.float32)
    window = 0.5 * (1 - np.cos(2 * np.pi * steps / frame))
    return window.astype(np.float32)


def gemma3n_audio_features(samples: np.ndarray, pre: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """mono float samples at the model's rate -> (input_features [frames, feature_size] float32,
    input_features_mask [frames] bool): what Gemma3nAudioFeatureExtractor returns for [samples] (one clip).

    `pre` holds the extractor's figures (preprocessor_config.json's names; absent ones take the extractor's
    defaults, GEMMA3N_AUDIO_DEFAULTS): sampling_rate, feature_size, frame_length_ms, hop_length_ms, min_frequency,
    max_frequency, mel_floor, preemphasis, preemphasis_htk_flavor, fft_overdrive, dither, input_scale_factor,
    per_bin_mean, per_bin_stddev, padding_value, max_length, truncation, pad_to_multiple_of. The clip is cut to
    max_length (rounded up to the multiple) and padded to a multiple of pad_to_multiple_of, as the extractor pads one
    clip. The arithmetic keeps the extractor's types (float32 samples, window and FFT, float64 from the filters on),
    so with numpy 2 the result is its to the last bit; numpy 1 transforms in float64, a float32 rounding apart.
    Dither (none by default) is random noise, in the extractor and here: no two runs agree then."""
    figures = {**GEMMA3N_AUDIO_DEFAULTS, **pre}
    frame, hop, fft = gemma4_sizes(figures)
    wave, real = _padded(samples, figures)
    frames = _frames(_dithered(wave, figures), figures, frame, hop, semicausal=False)
    magnitude = np.abs(np.fft.rfft(frames * gemma3n_window(frame), n=fft, axis=-1))
    mels = int(figures["feature_size"])
    filters = htk_mel_filters(int(figures["sampling_rate"]), fft, mels, float(figures["min_frequency"]),
                              float(figures["max_frequency"]), fb_matrix=True)
    log = _per_bin(np.log(np.maximum(magnitude @ filters, np.float64(figures["mel_floor"]))), figures, mels)
    mask = hop * np.arange(len(frames)) < real
    return log.astype(np.float32), mask
