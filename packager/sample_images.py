"""Image-like samples for 3-channel image inputs ([N,3,H,W] or [N,H,W,3] float tensors).

Random noise is no image: a text detector fed noise answers ~0 everywhere, and the cosine of two such flat maps
says nothing about a recipe (PP-OCRv4 det: 0.0138 on noise, where a page of text gives 0.965). Each sample is
instead a deterministic picture (per seed): smooth colour gradients, flat-coloured boxes (edges) and dark
text-like lines of short vertical and horizontal strokes, in [0, 1]; then normalized as the model's exporter
says it takes pixels. Ultralytics models take [0, 1] (its metadata records that exporter); others get the
ImageNet mean and standard deviation, what most image backbones (and PaddleOCR's detector) are trained on.
"""

from __future__ import annotations

import numpy as np

from packager.open_shapes import image_axes

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MIN_SIDE = 8   # below this an "image" input is no picture (a 3-vector, a tiny feature map): noise it stays


def is_image(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """A float input shaped like a batch of 3-channel pictures of at least MIN_SIDE pixels a side."""
    axes = image_axes(list(shape))
    return dtype.kind == "f" and axes is not None and min(shape[a] for a in axes) >= MIN_SIDE


def image_samples(shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator, unit_range: bool) -> np.ndarray:
    """One batch of pictures of `shape` (is_image), normalized: [0, 1] if `unit_range`, else by ImageNet's
    mean and standard deviation."""
    axes = image_axes(list(shape))
    assert axes is not None
    height, width = shape[axes[0]], shape[axes[1]]
    batch = np.stack([_picture(height, width, rng) for _ in range(shape[0])])   # N, H, W, 3 in [0, 1]
    if not unit_range:
        batch = (batch - IMAGENET_MEAN) / IMAGENET_STD
    if axes == (2, 3):
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=dtype)


def _picture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / height, x / width
    freq = rng.uniform(0.3, 1.5, size=(3, 2))
    phase = rng.uniform(0, 2 * np.pi, size=3)
    image = np.stack([0.6 + 0.25 * np.sin(2 * np.pi * (freq[c, 0] * x + freq[c, 1] * y) + phase[c])
                      for c in range(3)], axis=-1)
    for _ in range(int(rng.integers(1, 4))):   # flat boxes: sharp edges
        top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
        bottom = min(height, top + int(rng.integers(height // 8 + 1, height // 2 + 2)))
        right = min(width, left + int(rng.integers(width // 8 + 1, width // 2 + 2)))
        image[top:bottom, left:right] = rng.uniform(0.3, 1.0, size=3)
    _text_lines(image, rng)
    clipped: np.ndarray = np.clip(image, 0.0, 1.0)
    return clipped


def _text_lines(image: np.ndarray, rng: np.random.Generator) -> None:
    """Dark lines of glyph-like strokes 12 to 32 pixels high (at most 60% of the picture: a cropped text line
    is one of them), as on a page."""
    height, width = image.shape[:2]
    line = max(2, min(int(rng.uniform(12, 32)), int(height * 0.6)))
    stroke = max(1, line // 6)
    ink = rng.uniform(0.0, 0.25, size=3)
    top = int(rng.integers(0, max(1, line // 2)))
    while top + line <= height:
        left = int(rng.integers(0, max(1, width // 6)))
        right = int(width - rng.integers(0, max(1, width // 4)))
        col = left
        while col + line // 2 < right:
            glyph = max(2, int(line * rng.uniform(0.4, 0.9)))
            for _ in range(int(rng.integers(1, 4))):   # a glyph: a few vertical and horizontal strokes
                if rng.random() < 0.5:
                    c = col + int(rng.integers(0, glyph))
                    image[top:top + line, c:c + stroke] = ink
                else:
                    r = top + int(rng.integers(0, line))
                    image[r:r + stroke, col:col + glyph] = ink
            col += glyph + max(1, line // 5) + (line if rng.random() < 0.15 else 0)   # a word gap now and then
        top += line + int(line * rng.uniform(0.5, 2.0))
