"""Gemma 3n's encoder inputs on the device, in numpy. Audio: the log-mel features and frame mask of transformers 5.x's
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

Images (gemma3n_pixels): what transformers 5.x's image processor for Gemma 3n gives for one image. Its
AutoImageProcessor maps gemma3n to SiglipImageProcessorPil (the PIL backend, followed here to the bit) or
SiglipImageProcessor (torchvision's, which the published config's "SiglipImageProcessorFast" loads where torchvision
imports; its resize and float32 rescale put a pixel a uint8 step (bilinear, nearest) or two (bicubic, Lanczos) from
the PIL one, and this torch has no box or Hamming filter for it). A plain resize to the size with Pillow's filter on
the uint8 image, a float64 rescale rounded to float32, a float32 normalisation, channels first.
"""

from typing import Any

import numpy as np

from .media import rgb_pixels
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


# SiglipImageProcessorPil's figures by preprocessor_config.json's names: what a figure absent from a saved config
# means to transformers, so here too (the exporter records the saved figures over these, as for the audio).
GEMMA3N_IMAGE_DEFAULTS: dict[str, Any] = {
    "do_resize": True, "size": {"height": 224, "width": 224}, "resample": 3, "do_rescale": True,
    "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
}
# google/gemma-3n-E2B-it's preprocessor_config.json: 768 x 768, bilinear, not normalised (the rest as above)
GEMMA3N_IMAGE_PUBLISHED: dict[str, Any] = GEMMA3N_IMAGE_DEFAULTS | {
    "size": {"height": 768, "width": 768}, "resample": 2, "do_normalize": False}
# Pillow's filters by the numbers a config gives (transformers takes these six)
RESAMPLE = {0: "nearest", 1: "Lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "Hamming"}


def _figure(pre: dict[str, Any], key: str) -> Any:
    """pre's figure, the class's default where it is absent. A null stays None, as transformers loads a saved null
    (not the default): a step it turns off; a figure a step needs, refused as transformers refuses it."""
    return pre[key] if key in pre else GEMMA3N_IMAGE_DEFAULTS[key]


def _needed(pre: dict[str, Any], step: str, *keys: str) -> list[Any]:
    """The figures a step needs; one null is refused, as transformers' validation refuses it."""
    figures = [_figure(pre, key) for key in keys]
    if missing := [key for key, figure in zip(keys, figures) if figure is None]:
        raise ValueError(f"Gemma 3n's image figures turn {step} on and leave {' and '.join(missing)} null, which "
                         "transformers refuses too; give them, or turn the step off")
    return figures


def gemma3n_size(pre: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of the resized image: size's, a {"height", "width"} dict or a [height, width] pair, as the
    processor reads them; its other sizes (shortest_edge, max_height ...) keep the aspect ratio, which Gemma 3n's
    fixed-size encoder does not take, and are refused."""
    size, = _needed(pre, "do_resize", "size")
    if isinstance(size, dict):
        size = {k: v for k, v in size.items() if v is not None}
        if set(size) == {"height", "width"}:
            return int(size["height"]), int(size["width"])
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise ValueError(f"Gemma 3n's image size is a height and a width (as {{'height': 768, 'width': 768}}), got "
                     f"{size}")


def _per_channel(value: Any) -> np.ndarray:
    """image_mean or image_std as the processor takes it (one figure for all three channels, or three), float32."""
    figures = [value] * 3 if isinstance(value, (int, float)) else list(value)
    if len(figures) != 3:
        raise ValueError(f"Gemma 3n's image_mean and image_std have one figure or three (one a channel), got {value}")
    return np.asarray(figures, dtype=np.float32)


def gemma3n_pixels(pixels: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """[height, width, 3] uint8 pixels (a [height, width] grey image too) -> pixel_values [3, H, W] float32: what
    SiglipImageProcessorPil gives for one image as Gemma3nProcessor calls it (its pixel_values[0]), to the bit.

    `pre` holds the processor's figures (preprocessor_config.json's names; absent ones take the class's defaults,
    GEMMA3N_IMAGE_DEFAULTS; the published model's are GEMMA3N_IMAGE_PUBLISHED): do_resize, size, resample,
    do_rescale, rescale_factor, do_normalize, image_mean, image_std. A null is transformers' None: a step turned off,
    a figure a step needs refused. do_center_crop, and do_pad with a pad_size, which Gemma 3n's figures leave off,
    are refused; the rest (do_convert_rgb ...) change nothing for an RGB image. Resized (unless already the size)
    with Pillow's filter on the uint8 RGB image, as transformers' PIL backend resizes (Pillow rounds and clips each
    pixel); rescaled in float64 and rounded to float32; normalised in float32, (x - mean) / std. A grey image is
    the processor's RGB conversion of it (three equal channels). With neither rescale nor normalisation the
    processor's values stay uint8: here the same values, float32."""
    image = rgb_pixels(pixels, "Gemma 3n")
    if pre.get("do_center_crop") or (pre.get("do_pad") and pre.get("pad_size") is not None):
        raise ValueError("Gemma 3n's image pre-processing here resizes, rescales and normalises; a centre crop or "
                         "a pad_size (do_center_crop, do_pad) is not among its figures, so take them out of pre")
    if _figure(pre, "do_resize"):
        height, width = gemma3n_size(pre)
        resample = int(_needed(pre, "do_resize", "resample")[0])
        if resample not in RESAMPLE:
            raise ValueError(f"Gemma 3n's resample is one of Pillow's filters {RESAMPLE}, got {resample}")
        if (height, width) != image.shape[:2]:   # Pillow returns an image of the right size as it is: so does this
            try:
                from PIL import Image
            except ImportError:
                raise ValueError(f"Gemma 3n's pre-processing resizes with Pillow's {RESAMPLE[resample]}, and Pillow "
                                 "is not installed; pip install pillow") from None
            image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), resample))
    if _figure(pre, "do_rescale"):   # float64 then float32, as transformers rescales
        values = (image.astype(np.float64) * float(_needed(pre, "do_rescale", "rescale_factor")[0])).astype(np.float32)
    else:
        values = image.astype(np.float32)
    if _figure(pre, "do_normalize"):   # float32 throughout, as transformers normalises
        mean, std = _needed(pre, "do_normalize", "image_mean", "image_std")
        values = (values - _per_channel(mean)) / _per_channel(std)
    return np.ascontiguousarray(values.transpose(2, 0, 1))
