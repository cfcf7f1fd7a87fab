"""Gemma 4's image pre-processing on the device (targets/runtime/media_gemma4.py's gemma4_patches) against transformers'
own, Gemma4ImageProcessorPil, run in the `genai` environment (transformers 5.x): the same pixel values, patch
positions and soft-token counts for images it enlarges, shrinks, pads, leaves alone, and a strip too thin for one
pooled patch across; and the device code runs with no packager, torch or transformers to import."""

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

PRE = {"patch_size": 16, "max_soft_tokens": 280, "pooling_kernel_size": 3, "rescale_factor": 1 / 255}


@functools.cache
def _images() -> dict[str, np.ndarray]:
    """[height, width, 3] uint8, made here: smooth, hard-edged, large, tiny, already the target size, a strip."""
    y, x = np.mgrid[0:300, 0:200]
    gradient = np.stack([x * 255 // 199, y * 255 // 299, (x + y) * 255 // 498], axis=-1)
    y, x = np.mgrid[0:64, 0:500]
    checkerboard = np.repeat((((y // 8 + x // 8) % 2) * 255)[..., None], 3, axis=-1)
    y, x = np.mgrid[0:1000, 0:1000]
    disc = np.where((((y - 480) ** 2 + (x - 530) ** 2) < 350**2)[..., None], [250, 200, 40], [10, 30, 90])
    rng = np.random.RandomState(0)
    images = {"gradient": gradient, "checkerboard": checkerboard, "disc": disc,
              "tiny": rng.randint(0, 256, (20, 30, 3)), "fits": rng.randint(0, 256, (768, 768, 3)),
              "strip": rng.randint(0, 256, (3, 2000, 3))}
    return {name: image.astype(np.uint8) for name, image in images.items()}


# (image, max_soft_tokens): 768 x 768 is already its size at 280 soft tokens (no resize); 70 is the smallest budget
CASES = [(name, 280) for name in _images()] + [("gradient", 70), ("disc", 70), ("strip", 70)]

# In the genai environment: transformers' Pil processor on each case, as a user hands it a PIL image.
REFERENCE = r"""
import json, sys
sys.path.append(sys.argv[1])   # Pillow from the test's environment, after the environment's own packages
import numpy as np
from PIL import Image
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil
images, out = np.load(sys.argv[2]), {}
for name, tokens in json.loads(sys.argv[4]):
    got = Gemma4ImageProcessorPil(max_soft_tokens=tokens)(Image.fromarray(images[name]))
    key = f"{name}-{tokens}"
    out[key + ".values"], out[key + ".positions"] = got["pixel_values"][0], got["image_position_ids"][0]
    out[key + ".tokens"] = np.array(got["num_soft_tokens_per_image"])
np.savez(sys.argv[3], **out)
"""


def _pillow_only(PIL: Any, folder: Path) -> Path:
    """A folder with the test environment's Pillow and nothing else: the genai environment has no Pillow (its
    transformers' PIL backend then refuses to load) and is not changed here; all of this environment's packages on
    its path would bring transformers 4.x in."""
    folder.mkdir()
    site = Path(PIL.__file__).resolve().parents[1]
    for entry in [site / "PIL", *site.glob("pillow.libs"), *site.glob("pillow-*.dist-info")]:
        (folder / entry.name).symlink_to(entry)   # pillow.libs: the libraries PIL's modules load beside them
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    PIL = pytest.importorskip("PIL", reason="gemma4_patches resizes with Pillow: pip install pillow (the test extra)")
    if not is_ready(GENAI):
        pytest.skip("needs `packager env create genai`")
    tmp = tmp_path_factory.mktemp("gemma4")
    np.savez(tmp / "images.npz", **_images())
    proc = subprocess.run([str(GENAI.python), "-c", REFERENCE, str(_pillow_only(PIL, tmp / "pillow")),
                           str(tmp / "images.npz"), str(tmp / "ref.npz"), json.dumps(CASES)],
                          capture_output=True, text=True, env=child_environ(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(tmp / "ref.npz") as ref:
        return dict(ref)


@pytest.mark.parametrize(("name", "tokens"), CASES)
def test_patches_are_transformers_own(reference: dict[str, np.ndarray], name: str, tokens: int) -> None:
    values, positions, soft = runner().gemma4_patches(_images()[name], {**PRE, "max_soft_tokens": tokens})
    key = f"{name}-{tokens}"
    assert values.dtype == np.float32 and positions.dtype == np.int64
    assert values.shape == reference[key + ".values"].shape == (tokens * 9, 3 * 16**2)
    np.testing.assert_allclose(values, reference[key + ".values"], rtol=0, atol=1e-6)
    assert np.array_equal(values, reference[key + ".values"])   # to the bit, in fact: the same float64 rescale
    np.testing.assert_array_equal(positions, reference[key + ".positions"])
    assert [soft] == reference[key + ".tokens"].tolist()
    assert soft * 9 == int((positions[:, 0] >= 0).sum())   # the rest is padding, at (-1, -1)


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
pre = {"patch_size": 16, "max_soft_tokens": 280, "pooling_kernel_size": 3, "rescale_factor": 1 / 255}
values, positions, soft = run.gemma4_patches(np.full((768, 768, 3), 255, np.uint8), pre)
print(values.shape, float(values.max()), soft)
try:
    run.gemma4_patches(np.zeros((20, 30, 3), np.uint8), pre)
except ValueError as e:
    print(e)
"""


def test_the_device_code_imports_nothing_of_the_host() -> None:
    proc = subprocess.run([sys.executable, "-c", NO_HOST, str(targets_dir() / "run.py")], capture_output=True,
                          text=True, env=child_environ(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sized, refused = proc.stdout.splitlines()
    assert sized == "(2520, 768) 1.0 256"
    assert "Pillow is not installed" in refused and refused.endswith("pip install pillow")
    assert runner().gemma4_patches.__module__.startswith("bundle_runtime_")   # the host runs the device's copy
