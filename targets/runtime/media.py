"""Raw inputs an encoder-decoder reads on the device: WAV and PNG with the standard library and numpy, and the
log-mel spectrogram, resized pixels or (Gemma 4) padded patches its pre-processor would compute.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np

from .manifest import HERE, SAMPLE_MEDIA


def read_wav(path: Path, rate: int) -> np.ndarray:
    """A PCM WAV file (8, 16 or 32 bits, any channels: averaged) as float32 samples in [-1, 1] at `rate`
    (another rate is resampled linearly: good enough for speech recognition, not for music)."""
    import wave

    try:
        with wave.open(str(path), "rb") as w:
            width, channels, source_rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            data = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise ValueError(f"{path} is not a PCM WAV file ({e}); convert it, e.g. ffmpeg -i IN -ar {rate} -ac 1 "
                         "OUT.wav") from None
    kinds = {1: (np.uint8, 128.0, 128.0), 2: (np.int16, 0.0, 32768.0), 4: (np.int32, 0.0, 2147483648.0)}
    if width not in kinds:
        raise ValueError(f"{path} has {width * 8}-bit samples; give 8, 16 or 32-bit PCM (ffmpeg -i IN -ar {rate} "
                         "-ac 1 -sample_fmt s16 OUT.wav)")
    dtype, offset, scale = kinds[width]
    samples = (np.frombuffer(data, dtype=dtype).astype(np.float64) - offset) / scale
    samples = samples.reshape(-1, channels).mean(axis=1)
    if source_rate != rate and len(samples):
        times = np.arange(int(len(samples) * rate / source_rate)) / rate
        samples = np.interp(times, np.arange(len(samples)) / source_rate, samples)
    return samples.astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """Mono 16-bit PCM: the samples' format, written with the standard library (the same bytes every time)."""
    import wave

    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def mel_filters(rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """[1 + n_fft // 2, n_mels] triangular filters on the Slaney mel scale with Slaney's area
    normalisation, 0 Hz to rate / 2: what Whisper's feature extractor uses (librosa's defaults)."""
    def to_mel(hz: np.ndarray) -> np.ndarray:
        hz = np.asarray(hz, dtype=np.float64)
        mel = 3.0 * hz / 200.0
        log = hz >= 1000.0
        return np.where(log, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) * 27.0 / np.log(6.4), mel)

    def to_hz(mel: np.ndarray) -> np.ndarray:
        hz = 200.0 * mel / 3.0
        return np.where(mel >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)), hz)

    freqs = np.linspace(0, rate / 2, 1 + n_fft // 2)
    points = to_hz(np.linspace(to_mel(0.0), to_mel(rate / 2), n_mels + 2))
    widths = np.diff(points)
    slopes = points[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (points[2:n_mels + 2] - points[:n_mels]))[None, :]


def audio_features(samples: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """Whisper's log-mel spectrogram [mels, frames] of mono samples at the model's rate: padded (or cut)
    to the model's window, a periodic Hann STFT centred with reflection, power through the mel filters,
    log10 floored at 1e-10, clamped to 8 below its maximum and scaled to (x + 4) / 4."""
    n, n_fft, hop = int(pre["n_samples"]), int(pre["n_fft"]), int(pre["hop_length"])
    wave = np.full(n, float(pre.get("padding_value", 0.0)), dtype=np.float64)
    clip = np.asarray(samples, dtype=np.float64).ravel()[:n]
    wave[:len(clip)] = clip
    padded = np.pad(wave, n_fft // 2, mode="reflect")
    frames = 1 + (len(padded) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    power = np.abs(np.fft.rfft(padded[index] * window, axis=-1)) ** 2
    mel = power @ mel_filters(int(pre["sampling_rate"]), n_fft, int(pre["feature_size"]))
    log = np.log10(np.maximum(mel, 1e-10)).T[:, :-1]
    log = np.maximum(log, log.max() - 8.0)
    return ((log + 4.0) / 4.0).astype(np.float32)


def rgb_pixels(pixels: np.ndarray, model: str) -> np.ndarray:
    """[height, width, 3] uint8 pixels as the processors take them: a [height, width] grey image as three equal
    channels (their RGB conversion); anything else one ValueError sentence naming `model`."""
    image = np.asarray(pixels)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{model} takes [height, width, 3] uint8 pixels (what read_image gives), got "
                         f"{image.dtype} {list(image.shape)}")
    return image


def read_image(path: Path) -> np.ndarray:
    """[height, width, channels] uint8 pixels of an 8-bit PNG (any colour type but palette, not
    interlaced), read with zlib; other formats (JPEG ...) through Pillow where it is installed."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        try:
            from PIL import Image, ImageOps
        except ImportError:
            raise ValueError(f"{path} is not a PNG file, and Pillow (which reads other formats) is not installed; "
                             "convert it to PNG or pip install pillow") from None
        try:
            with Image.open(path) as image:   # a camera's EXIF orientation applied, as transformers' load_image does
                return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        except (OSError, SyntaxError) as e:   # PIL.UnidentifiedImageError is an OSError; a damaged file may be either
            raise ValueError(f"{path} is not a PNG file, nor an image Pillow reads ({e}); convert it to PNG or "
                             "JPEG") from None
    import struct
    import zlib

    pos, chunks, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    if header is None:
        raise ValueError(f"{path} is a damaged PNG file (no header)")
    width, height, depth, colour, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"{path} is a PNG this runner does not decode (8-bit grey, RGB or RGBA, not interlaced); "
                         "re-save it as 8-bit RGB, or pip install pillow")
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), dtype=np.uint8).reshape(height, 1 + width * channels)
    rows = np.zeros((height, width * channels), dtype=np.int32)
    for y in range(height):  # undo each row's filter (PNG spec, section 9)
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        above = rows[y - 1] if y else np.zeros_like(line)
        if kind in (0, 2):
            rows[y] = (line + (above if kind == 2 else 0)) & 255
            continue
        out = np.zeros_like(line)
        for x in range(len(line)):
            left = out[x - channels] if x >= channels else 0
            upper_left = above[x - channels] if x >= channels else 0
            if kind == 1:
                guess = left
            elif kind == 3:
                guess = (left + above[x]) // 2
            else:
                p = left + above[x] - upper_left
                pa, pb, pc = abs(p - left), abs(p - above[x]), abs(p - upper_left)
                guess = left if pa <= pb and pa <= pc else (above[x] if pb <= pc else upper_left)
            out[x] = (line[x] + guess) & 255
        rows[y] = out
    pixels = rows.astype(np.uint8).reshape(height, width, channels)
    return pixels[..., :3] if channels >= 3 else np.repeat(pixels[..., :1], 3, axis=-1)


def write_png(path: Path, pixels: np.ndarray) -> None:
    """[height, width, 3] uint8 as an 8-bit RGB PNG (no filtering): the samples' format, the same bytes every time."""
    import struct
    import zlib

    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape[:2]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def _resize_axis(image: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation along one axis, pixel centres aligned (half-pixel), as PIL's bilinear when enlarging."""
    n = image.shape[axis]
    if n == size:
        return image
    where = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    low = np.floor(where).astype(int)
    high = np.minimum(low + 1, n - 1)
    weight = (where - low).reshape([-1 if a == axis else 1 for a in range(image.ndim)])
    return np.take(image, low, axis=axis) * (1 - weight) + np.take(image, high, axis=axis) * weight


def image_pixels(pixels: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """[channels, height, width] float32 for a ViT-style encoder: resized (bilinear) to the model's size,
    rescaled (1/255) and normalised with the model's mean and standard deviation."""
    image = np.asarray(pixels, dtype=np.float64)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = _resize_axis(_resize_axis(image[..., :3], int(pre["height"]), 0), int(pre["width"]), 1)
    image = image * float(pre["rescale_factor"])
    image = (image - np.asarray(pre["mean"])) / np.asarray(pre["std"])
    return image.transpose(2, 0, 1).astype(np.float32)


def sample_media(bundle: Path = HERE) -> list[Any]:
    """The raw sample inputs of an encoder-decoder bundle: file paths (audio, images) or texts."""
    entries = json.loads((bundle / SAMPLE_MEDIA).read_text(encoding="utf-8"))
    return [bundle / e["file"] if "file" in e else e["text"] for e in entries]
