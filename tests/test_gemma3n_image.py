"""Gemma 3n's image pre-processing on the device (targets/runtime/media_gemma3n.py's gemma3n_pixels) against
transformers' own in the `genai` environment (transformers 5.x): SiglipImageProcessorPil, which its AutoImageProcessor
gives Gemma 3n with backend="pil", loaded from a preprocessor_config.json as a saved model's is. The same pixel values
to the bit for images it enlarges, shrinks, leaves alone, of one colour, and grey and RGBA PNGs read by read_image,
at the published figures, the class's defaults and others (normalised, nulls, another size, each of the six filters,
no rescale, no resize). The torchvision backend (SiglipImageProcessor, which the published config's
"SiglipImageProcessorFast" loads where torchvision imports) is a uint8 step or two from it. And the device code runs
with no packager, torch or transformers to import."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from packager.device_code import runner
from packager.exporter_envs import GENAI, child_environ, is_ready
from packager.paths import targets_dir

# google/gemma-3n-E2B-it's preprocessor_config.json, its image processor's figures. SiglipImageProcessorPil's own
# defaults differ in three: 224 x 224, bicubic (3), normalised.
PUBLISHED = {"do_normalize": False, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
             "image_std": [0.5, 0.5, 0.5], "resample": 2, "rescale_factor": 0.00392156862745098,
             "size": {"height": 768, "width": 768}}
CLIP = {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}
SMALL = {"height": 240, "width": 320}
PNGS = ("grey.png", "rgba.png")   # written by the reference fixture, read by read_image here and by path there


@functools.cache
def _images() -> dict[str, np.ndarray]:
    """[height, width, 3] uint8 arrays made here, and the PNGs' pixels ([height, width] grey, [height, width, 4])."""
    y, x = np.mgrid[0:301, 0:203]
    portrait = np.stack([x * 255 // 202, y * 255 // 300, (x + y) * 255 // 502], axis=-1)
    y, x = np.mgrid[0:457, 0:1203]
    landscape = np.where((((y - 220) ** 2 + (x - 630) ** 2) < 200**2)[..., None], [250, 200, 40], [10, 30, 90])
    landscape[(y // 16 + x // 16) % 2 == 0] //= 2   # hard edges
    rng = np.random.RandomState(0)
    y, x = np.mgrid[0:123, 0:77]
    images = {"portrait": portrait, "landscape": landscape, "large": rng.randint(0, 256, (1001, 803, 3)),
              "tiny": rng.randint(0, 256, (17, 9, 3)), "flat": np.full((300, 200, 3), [200, 30, 90]),
              "fits": rng.randint(0, 256, (768, 768, 3)), "grey": (x * 3 + y * 2) % 256,
              "rgba": np.concatenate([rng.randint(0, 256, (97, 211, 3)), rng.randint(0, 256, (97, 211, 1))], -1)}
    return {name: image.astype(np.uint8) for name, image in images.items()}


def _figures(**changes: Any) -> dict[str, Any]:
    return {**PUBLISHED, **changes}


# (image, figures); a PNG's name is its file. "fits" is already the published size (no resize); {} takes the class's
# defaults; a saved null is None in transformers, not the default (a step off); the six filters at 240 x 320 enlarge
# "tiny" and shrink "landscape".
NULLS = {"do_normalize": None, "do_convert_rgb": None, "do_center_crop": None, "crop_size": None, "do_pad": None,
         "pad_size": None}
CASES: list[tuple[str, dict[str, Any]]] = [
    *[(name, PUBLISHED) for name in ("portrait", "landscape", "large", "tiny", "flat", "fits", *PNGS)],
    *[(name, {}) for name in ("portrait", "large", "grey.png")],
    ("landscape", _figures(size=SMALL, **NULLS)),
    *[(name, _figures(do_normalize=True, **CLIP)) for name in ("portrait", "large", "flat")],
    *[(name, _figures(size=SMALL, resample=filt, do_normalize=True)) for name in ("tiny", "landscape")
      for filt in range(6)],
    ("fits", _figures(size=[300, 200])),
    ("portrait", _figures(do_rescale=False, do_normalize=True, image_mean=127.5, image_std=127.5, size=SMALL)),
    ("large", _figures(do_resize=False, do_normalize=True)),
    ("portrait", _figures(do_resize=None, do_rescale=None, do_normalize=True, image_mean=[100, 120, 140],
                          image_std=[50, 60, 70])),
    ("landscape", _figures(do_rescale=False, size=SMALL)),   # uint8 in transformers, the same values in float32 here
]
IDS = [f"{i}-{name}" for i, (name, _) in enumerate(CASES)]
# the cases the torchvision backend runs too: not box or Hamming (torch's interpolate has neither), not a PNG's path
# (that backend decodes it with torchvision.io, whose extension does not load beside the genai environment's torch)
TORCHVISION = [i for i, (name, figures) in enumerate(CASES)
               if figures.get("resample") in (None, 0, 1, 2, 3) and figures.get("do_resize", True)
               and not name.endswith(".png")]

# In the genai environment: each case's figures saved as a preprocessor_config.json (as the published one names its
# processor) and loaded with AutoImageProcessor's PIL backend, on the image as a user hands it over: an array as a
# PIL image, a PNG by its path (transformers' load_image then converts it to RGB, dropping the alpha as read_image
# does; an RGBA PIL image handed over as such is composited onto white instead, which read_image does not). The
# torchvision backend on the cases named (the environment's torchvision imports without its operators: PyPI's is
# built for CUDA torch; packager/data/envs/packager_torchvision.py).
REFERENCE = r"""
import json, sys
from pathlib import Path
import numpy as np
import PIL
from PIL import Image
from transformers import AutoImageProcessor
folder = Path(sys.argv[1])
images, out = np.load(folder / "images.npz"), {"pillow": np.array(PIL.__version__)}
for i, (name, figures) in enumerate(json.loads(sys.argv[2])):
    saved = folder / str(i)
    saved.mkdir()
    (saved / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "SiglipImageProcessorFast", **figures}))
    image = str(folder / name) if name.endswith(".png") else Image.fromarray(images[name])
    processor = AutoImageProcessor.from_pretrained(saved, backend="pil")
    assert type(processor).__name__ == "SiglipImageProcessorPil", type(processor)
    out[f"{i}.pil"] = processor(image)["pixel_values"][0]
    if i in json.loads(sys.argv[3]):
        processor = AutoImageProcessor.from_pretrained(saved)   # the default backend: torchvision's, where it imports
        assert type(processor).__name__ == "SiglipImageProcessor", type(processor)
        out[f"{i}.torchvision"] = processor(image, return_tensors="pt")["pixel_values"][0].numpy()
np.savez(folder / "ref.npz", **out)
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, np.ndarray], Path]:
    """The reference values by case, and the folder with the PNGs."""
    pytest.importorskip("PIL", reason="gemma3n_pixels resizes with Pillow: pip install pillow (the test extra)")
    from PIL import Image

    if not is_ready(GENAI):
        pytest.skip("needs `packager env create genai`")
    tmp = tmp_path_factory.mktemp("gemma3n")
    images = _images()
    np.savez(tmp / "images.npz", **{k: v for k, v in images.items() if k not in ("grey", "rgba")})
    Image.fromarray(images["grey"], "L").save(tmp / "grey.png")   # 8-bit grey and RGBA PNGs, Pillow's filters
    Image.fromarray(images["rgba"], "RGBA").save(tmp / "rgba.png")
    proc = subprocess.run([str(GENAI.python), "-c", REFERENCE, str(tmp), json.dumps(CASES), json.dumps(TORCHVISION)],
                          capture_output=True, text=True, env=child_environ(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(tmp / "ref.npz") as ref:
        return dict(ref), tmp


def _pixels(name: str, folder: Path) -> np.ndarray:
    return runner().read_image(folder / name) if name.endswith(".png") else _images()[name]


def _step(figures: dict[str, Any]) -> float:
    """One uint8 step through the rescale and the normalisation (the class's defaults where a figure is absent, a
    null a step off): the most a pixel rounded the other way moves."""
    given = {"do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_std": 0.5, **figures}
    step = float(given["rescale_factor"]) if given["do_rescale"] else 1.0
    return step / float(np.min(given["image_std"])) if given["do_normalize"] else step


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_pixels_are_transformers_own(reference: tuple[dict[str, np.ndarray], Path], case: int) -> None:
    import PIL

    ref, folder = reference
    name, figures = CASES[case]
    values, expected = runner().gemma3n_pixels(_pixels(name, folder), figures), ref[f"{case}.pil"]
    assert values.dtype == np.float32 and values.flags.c_contiguous
    assert values.shape == expected.shape and values.shape[0] == 3
    if not figures.get("do_rescale", True) and not figures.get("do_normalize", True):
        assert expected.dtype == np.uint8   # transformers leaves the resized pixels as they are
    else:
        assert expected.dtype == np.float32
    if str(ref["pillow"]) != PIL.__version__:   # another Pillow may round a resized pixel the other way
        np.testing.assert_allclose(values, expected, rtol=0, atol=_step(figures) + 1e-6)
    else:   # the same Pillow: the same bits (the float64 rescale and float32 normalisation as transformers')
        assert np.array_equal(values, expected)


def test_the_shapes_are_the_figures(reference: tuple[dict[str, np.ndarray], Path]) -> None:
    """What the shapes say: the published 768 x 768, the class's 224 x 224, another size, no resize."""
    ref, _ = reference
    shapes = {IDS[i]: ref[f"{i}.pil"].shape for i in range(len(CASES))}
    assert shapes["0-portrait"] == shapes["6-grey.png"] == shapes["7-rgba.png"] == (3, 768, 768)
    assert shapes["8-portrait"] == shapes["10-grey.png"] == (3, 224, 224)
    assert shapes["15-tiny"] == shapes["26-landscape"] == (3, 240, 320) and shapes["27-fits"] == (3, 300, 200)
    assert shapes["29-large"] == (3, 1001, 803) and shapes["30-portrait"] == (3, 301, 203)


def test_the_torchvision_backend_is_a_step_or_two_away(reference: tuple[dict[str, np.ndarray], Path]) -> None:
    """SiglipImageProcessor (torchvision's antialiased resize, a float32 rescale fused into the normalisation) against
    the device's, measured: one uint8 step through the figures at most with the bilinear and nearest filters (1/255
    at the published figures, on a quarter of the pixels of a noisy image, none of a smooth gradient's), two with
    bicubic and Lanczos (on under 1% of the pixels); without a resize, float32 rounding only. A step is 1/255 over
    the standard deviation when normalised: 2/255 with Gemma's 0.5."""
    ref, folder = reference
    far, gaps = {}, {}
    for i in TORCHVISION:
        name, figures = CASES[i]
        values, other = runner().gemma3n_pixels(_pixels(name, folder), figures), ref[f"{i}.torchvision"]
        assert other.shape == values.shape
        gap = np.abs(other.astype(np.float32) - values)
        steps = 2 if figures.get("resample", 3) in (1, 3) else 1   # bicubic (the default) and Lanczos: two
        assert float(gap.max()) <= steps * _step(figures) + 1e-6, IDS[i]
        far[IDS[i]], gaps[IDS[i]] = float((gap > 1e-6).mean()), float(gap.max())
    assert far["2-large"] > 0.2 and far["0-portrait"] == 0.0   # noise: a quarter of its pixels a step apart
    assert gaps["2-large"] == pytest.approx(1 / 255, abs=1e-6) and gaps["5-fits"] < 1e-6   # no resize: rounding


def test_refusals() -> None:
    """A wrong input and figures this code does not follow are one sentence each, before any work."""
    pixels = runner().gemma3n_pixels
    image = np.zeros((20, 30, 3), np.uint8)
    for bad in (np.zeros((20, 30, 3), np.float32), np.zeros((20, 30, 4), np.uint8), np.zeros((2, 20, 30, 3))):
        with pytest.raises(ValueError, match=r"takes \[height, width, 3\] uint8 pixels"):
            pixels(bad, PUBLISHED)
    with pytest.raises(ValueError, match="a height and a width"):
        pixels(image, _figures(size={"shortest_edge": 768}))
    with pytest.raises(ValueError, match="one of Pillow's filters"):
        pixels(image, _figures(resample=6))
    with pytest.raises(ValueError, match="centre crop"):
        pixels(image, _figures(do_center_crop=True, crop_size={"height": 10, "width": 10}))
    with pytest.raises(ValueError, match="leave size null"):   # transformers refuses these nulls too
        pixels(image, _figures(size=None))
    with pytest.raises(ValueError, match="turn do_normalize on and leave image_std null"):
        pixels(image, _figures(do_normalize=True, image_std=None))
    with pytest.raises(ValueError, match="one figure or three"):
        pixels(image, _figures(do_normalize=True, image_mean=[0.5, 0.5]))
    grey = pixels(np.full((768, 768), 51, np.uint8), PUBLISHED)   # a 2-D grey image: three equal channels
    assert grey.shape == (3, 768, 768) and np.all(grey == np.float32(0.2))


# The device's code with packager, torch, transformers and Pillow blocked: an image already its target size needs
# none of them; one to resize says how to get Pillow.
NO_HOST = r"""
import importlib.util, sys
for blocked in ("packager", "torch", "transformers", "PIL"):
    sys.modules[blocked] = None
import numpy as np
spec = importlib.util.spec_from_file_location("device_run", sys.argv[1])
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)
pre = {"do_normalize": False, "resample": 2, "size": {"height": 768, "width": 768}}
values = run.gemma3n_pixels(np.full((768, 768, 3), 255, np.uint8), pre)
print(values.shape, values.dtype, float(values.max()))
try:
    run.gemma3n_pixels(np.zeros((20, 30, 3), np.uint8), pre)
except ValueError as e:
    print(e)
"""


def test_the_device_code_imports_nothing_of_the_host() -> None:
    proc = subprocess.run([sys.executable, "-c", NO_HOST, str(targets_dir() / "run.py")], capture_output=True,
                          text=True, env=child_environ(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sized, refused = proc.stdout.splitlines()
    assert sized == "(3, 768, 768) float32 1.0"
    assert "bilinear" in refused and "Pillow is not installed" in refused and refused.endswith("pip install pillow")
    assert runner().gemma3n_pixels.__module__.startswith("bundle_runtime_")   # the host runs the device's copy
