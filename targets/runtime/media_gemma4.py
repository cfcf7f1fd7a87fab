"""Gemma 4's encoder inputs on the device, in numpy, as transformers 5.x's processor makes them for one input:

- audio: the log-mel features and frame mask of Gemma4AudioFeatureExtractor with its defaults (the processor passes
  each clip as a one-item batch). Not Whisper's features (media.audio_features): a 20 ms window every 10 ms through a
  512-point FFT, magnitude (not power) through HTK-scale filters without area normalisation, natural log above a
  floor, no clamping; the clip padded only to a multiple of 128 samples (not to 30 s), and a mask of the frames that
  hold only audio.
- images: Gemma4ImageProcessorPil's patches (gemma4_patches): an aspect-preserving resize, patches and their (x, y)
  positions, padded to the processor's largest image.
"""

import math
from typing import Any

import numpy as np

from .media import rgb_pixels


def _htk_mel(hz: np.ndarray, scalar: bool = False) -> np.ndarray:
    if scalar:  # the standard library's log10, one value at a time: numpy's differs in the last bit at times
        return np.array([2595.0 * math.log10(1.0 + float(f) / 700.0) for f in hz], dtype=np.float64)
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _htk_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (np.power(10.0, mel / 2595.0) - 1.0)


def htk_mel_filters(rate: int, n_fft: int, n_mels: int, low: float, high: float,
                    fb_matrix: bool = False) -> np.ndarray:
    """[1 + n_fft // 2, n_mels] triangular filters on the HTK mel scale, `low` to `high` Hz, peaks of 1 (no area
    normalisation): transformers' mel_filter_bank(norm=None, mel_scale="htk") as Gemma 4 calls it. Its bin
    frequencies run to rate // 2 (integer division), as there. With 257 bins and 128 filters from 0 Hz the first
    filter (0 to 28 Hz) falls between the first two bins and is all zero: its feature is log(mel_floor) always,
    in transformers too (which hides the warning, and its comment says the uppermost filter).

    fb_matrix: the same triangles as Gemma 3n's create_fb_matrix computes them (media_gemma3n.py): float32 bin
    frequencies rate / n_fft apart (to rate / 2, not rate // 2) and the band's edges through math.log10."""
    if fb_matrix:
        freqs = np.arange(1 + n_fft // 2, dtype=np.float32) * (rate / n_fft)
    else:
        freqs = np.linspace(0, rate // 2, 1 + n_fft // 2)
    low_mel, high_mel = _htk_mel(np.array([low, high], dtype=np.float64), scalar=fb_matrix)
    points = _htk_hz(np.linspace(low_mel, high_mel, n_mels + 2))
    widths = np.diff(points)
    slopes: np.ndarray = points[None, :] - freqs[:, None]   # float64 either way
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    return np.maximum(0.0, np.minimum(down, up))


def gemma4_sizes(pre: dict[str, Any]) -> tuple[int, int, int]:
    """(frame, hop, fft) lengths in samples. From the milliseconds, as the extractor computes them on loading: a
    preprocessor_config.json's "frame_length", "hop_length" and "fft_length" (samples) are what it wrote, and it
    ignores them when it reads the file back, so they are ignored here too."""
    rate = int(pre.get("sampling_rate", 16000))
    frame = int(round(rate * float(pre.get("frame_length_ms", 20.0)) / 1000.0))
    hop = int(round(rate * float(pre.get("hop_length_ms", 10.0)) / 1000.0))
    fft = 2 ** math.ceil(math.log2(frame))
    return frame, hop, fft * 2 if pre.get("fft_overdrive", False) else fft


def _padded(samples: np.ndarray, pre: dict[str, Any]) -> tuple[np.ndarray, int]:
    """float32 samples (transformers rounds float64 input to float32 first) cut to max_length when truncating, then
    padded with padding_value to a multiple of pad_to_multiple_of (padding="longest": for one clip, no further),
    with how many of them are the clip's."""
    wave = np.asarray(samples, dtype=np.float32).ravel()
    multiple = pre.get("pad_to_multiple_of", 128)
    limit = pre.get("max_length", 480000)
    if pre.get("truncation", True) and limit is not None:
        limit = int(limit)
        if multiple and limit % int(multiple):
            limit = (limit // int(multiple) + 1) * int(multiple)  # transformers rounds the cut up to the multiple
        wave = wave[:limit]
    real = len(wave)
    if multiple and real % int(multiple):
        wave = np.pad(wave, (0, int(multiple) - real % int(multiple)),
                      constant_values=np.float32(pre.get("padding_value", 0.0)))
    return wave, real


def _dithered(wave: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """The padded wave with the extractor's dither and input_scale_factor (float32 still)."""
    dither = float(pre.get("dither", 0.0) or 0.0)
    if dither > 0.0:  # Gaussian noise as the extractor adds (its default is none): no two runs agree here
        wave = wave + dither * np.random.default_rng().standard_normal(len(wave)).astype(np.float32)
    scale = float(pre.get("input_scale_factor", 1.0))
    if scale != 1.0:
        wave = wave * np.float32(scale)
    return wave


def _frames(wave: np.ndarray, pre: dict[str, Any], frame: int, hop: int, semicausal: bool = True) -> np.ndarray:
    """[frames, frame] float32 analysis frames. The wave gets frame // 2 zeros in front (the first frame centred
    on t = 0: "semicausal"; Gemma 3n's extractor has none) and each frame is cut frame + 1 samples long, the extra
    one for the pre-emphasis: the frame count (and the mask) follow from that length even where no pre-emphasis
    uses the extra sample."""
    if semicausal:
        wave = np.concatenate([np.zeros(frame // 2, dtype=wave.dtype), wave])
    count = max(0, (len(wave) - (frame + 1)) // hop + 1)
    cut = wave[np.arange(frame + 1)[None, :] + hop * np.arange(count)[:, None]]
    emphasis = float(pre.get("preemphasis", 0.0) or 0.0)
    frames: np.ndarray = cut[:, :-1]
    if emphasis <= 0.0:
        return frames
    if pre.get("preemphasis_htk_flavor", True):  # the first sample scaled, not differenced, and the extra unused
        return np.concatenate([cut[:, :1] * (1.0 - emphasis), cut[:, 1:-1] - emphasis * cut[:, :-2]], axis=-1)
    frames = cut[:, 1:] - emphasis * cut[:, :-1]
    return frames


def _per_bin(log: np.ndarray, pre: dict[str, Any], mels: int) -> np.ndarray:
    """[frames, mels] float64 log-mels less per_bin_mean, over per_bin_stddev, where the figures give them."""
    if pre.get("per_bin_mean") is not None:
        log = log - np.asarray(pre["per_bin_mean"], dtype=np.float64).reshape(1, mels)
    if pre.get("per_bin_stddev") is not None:
        log = log / np.asarray(pre["per_bin_stddev"], dtype=np.float64).reshape(1, mels)
    return log


def gemma4_audio_features(samples: np.ndarray, pre: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """mono float samples at the model's rate -> (input_features [frames, feature_size] float32,
    input_features_mask [frames] bool): what Gemma4AudioFeatureExtractor returns for [samples] (one clip).

    `pre` holds the extractor's figures (preprocessor_config.json's names; absent ones take the extractor's
    defaults): sampling_rate, feature_size, frame_length_ms, hop_length_ms, min_frequency, max_frequency,
    mel_floor, preemphasis, preemphasis_htk_flavor, fft_overdrive, dither, input_scale_factor, per_bin_mean,
    per_bin_stddev, padding_value, max_length, truncation, pad_to_multiple_of. The arithmetic keeps the
    extractor's types (float32 frames and window into the FFT, float64 from the filters on), so with numpy 2
    (float32 FFTs) the result is the extractor's to the last bit; numpy 1 transforms in float64, which moves the
    log-mels by float32 rounding (under 1e-6 on speech-like sounds). A frame is valid when its last sample (the
    extra one cut for the pre-emphasis) is the clip's; invalid frames are zeros, as the extractor zeroes them
    after the log (so padding_value never shows)."""
    frame, hop, fft = gemma4_sizes(pre)
    wave, real = _padded(samples, pre)
    frames = _frames(_dithered(wave, pre), pre, frame, hop)
    window = np.hanning(frame + 1)[:-1].astype(np.float32)  # periodic Hann, computed as transformers does
    magnitude = np.abs(np.fft.rfft(frames * window, n=fft, axis=-1))
    mels = int(pre.get("feature_size", 128))
    filters = htk_mel_filters(int(pre.get("sampling_rate", 16000)), fft, mels,
                              float(pre.get("min_frequency", 0.0)), float(pre.get("max_frequency", 8000.0)))
    log = _per_bin(np.log(magnitude @ filters + np.float64(pre.get("mel_floor", 1e-3))), pre, mels)
    mask = hop * np.arange(len(frames)) + frame - frame // 2 < real
    return log.astype(np.float32) * mask[:, None], mask


def gemma4_size(height: int, width: int, pre: dict[str, Any]) -> tuple[int, int]:
    """The largest (height, width) of about the image's aspect ratio, both multiples of a pooled patch, whose patches
    fit in the budget: transformers' get_aspect_ratio_preserving_size, so the device sees what the model was fed."""
    patch, kernel, tokens = int(pre["patch_size"]), int(pre["pooling_kernel_size"]), int(pre["max_soft_tokens"])
    side = kernel * patch
    factor = math.sqrt(tokens * kernel**2 * patch**2 / (height * width))
    target_height, target_width = int(factor * height / side) * side, int(factor * width / side) * side
    # a strip too thin for one pooled patch across gets one, and as many along as its ratio gives (within budget);
    # transformers' two refusals (a 0 x 0 size, a size over budget) cannot follow from these figures
    if target_height == 0:
        return side, min(width // height * side, tokens * side)
    if target_width == 0:
        return min(height // width * side, tokens * side), side
    return target_height, target_width


def gemma4_patches(pixels: np.ndarray, pre: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """[height, width, 3] uint8 pixels -> (pixel_values [max_patches, 3 * patch**2] float32, pixel_position_ids
    [max_patches, 2] int64, soft tokens of this image): Gemma 4's vision pre-processing (transformers'
    Gemma4ImageProcessorPil), the same figures to the bit. Resized keeping the aspect ratio (gemma4_size) with
    Pillow's bicubic on the uint8 image, rescaled, not normalised; each patch's pixels row by row, channels last;
    each patch's position (x, y); padded to max_soft_tokens * pooling_kernel_size**2 patches, zero pixels at (-1, -1).
    """
    image = rgb_pixels(pixels, "Gemma 4")
    patch, kernel = int(pre["patch_size"]), int(pre["pooling_kernel_size"])
    height, width = gemma4_size(image.shape[0], image.shape[1], pre)
    if (height, width) != image.shape[:2]:   # transformers leaves an image of the right size alone: so does this
        try:
            from PIL import Image
        except ImportError:
            raise ValueError("Gemma 4's pre-processing resizes with Pillow's bicubic, and Pillow is not installed; "
                             "pip install pillow") from None
        # uint8 in, uint8 out, as transformers' PIL backend resizes: Pillow rounds and clips each pixel
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))
    # float64 then float32, as transformers rescales: float32 arithmetic puts 126 of the 256 values a bit apart
    scaled = (image.astype(np.float64) * float(pre["rescale_factor"])).astype(np.float32)
    rows, cols = height // patch, width // patch
    patches = scaled.reshape(rows, patch, cols, patch, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, -1)
    max_patches = int(pre["max_soft_tokens"]) * kernel**2
    values = np.zeros((max_patches, patches.shape[1]), dtype=np.float32)
    values[:len(patches)] = patches
    positions = np.full((max_patches, 2), -1, dtype=np.int64)
    positions[:len(patches)] = np.stack(np.meshgrid(np.arange(cols), np.arange(rows)), axis=-1).reshape(-1, 2)
    return values, positions, len(patches) // kernel**2
