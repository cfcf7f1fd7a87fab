"""Sounds for the audio feature extractors' tests (tests/test_gemma4_audio.py, tests/test_gemma3n_audio.py): float64
waves at 16 kHz, as a WAV reader or a resampler hands them over, and the extractor's figures and its reference run
in the `genai` environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from packager.exporter_envs import GENAI

RATE = 16000


def sounds(short: float, shorter: float) -> dict[str, np.ndarray]:
    """The same waves for each extractor, but for the two shortest: `short` seconds (one frame) and `shorter` (no
    whole frame), which its frame length decides."""
    def t(seconds: float) -> np.ndarray:
        return np.arange(int(seconds * RATE)) / RATE

    rng = np.random.default_rng(0)
    click = np.zeros(int(0.2 * RATE))
    click[1600] = 1.0
    sweep = t(2.3)
    return {"sine": 0.5 * np.sin(2 * np.pi * 440 * t(1.0)),                 # 16000 samples: a multiple of 128
            "chirp": 0.8 * np.sin(2 * np.pi * (100 * sweep + 1500 * sweep ** 2)),   # 100 Hz to 7 kHz, padded
            "noise": 0.3 * rng.standard_normal(30 * RATE),                   # the longest clip kept whole
            "click": click,                                                  # silence around one sample: the floor
            "long": 0.2 * rng.standard_normal(int(31.7 * RATE)) + 0.3 * np.sin(2 * np.pi * 1000 * t(31.7)),
            "short": 0.5 * np.sin(2 * np.pi * 300 * t(short)),
            "shorter": 0.5 * np.sin(2 * np.pi * 300 * t(shorter))}


def pre_of(init: dict[str, Any], call: dict[str, Any]) -> dict[str, Any]:
    """The `pre` figures of an extractor built with `init` and called with `call`."""
    return {"sampling_rate": RATE, "feature_size": 128, **init, **call}


def reference(folder: Path, script: str, waves: dict[str, np.ndarray],
              configs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The extractor's arrays for every wave and config: `script` run in the genai environment on them."""
    np.savez(folder / "sounds.npz", allow_pickle=False, **waves)
    proc = subprocess.run([str(GENAI.python), "-c", script, str(folder / "sounds.npz"), json.dumps(configs),
                           str(folder / "reference.npz")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(folder / "reference.npz") as arrays:
        return {name: arrays[name] for name in arrays.files}


def assert_same(got: tuple[np.ndarray, np.ndarray], reference: dict[str, np.ndarray], key: str, atol: float) -> None:
    """The device's (features, mask) are the extractor's at `key` ("config/sound"): types, shapes, the mask
    exactly, the features within `atol`."""
    features, mask = got
    expected, expected_mask = reference[f"{key}/features"], reference[f"{key}/mask"]
    assert features.dtype == np.float32 and mask.dtype == np.bool_
    assert features.shape == expected.shape and mask.shape == expected_mask.shape
    assert np.array_equal(mask, expected_mask)
    np.testing.assert_allclose(features, expected, rtol=0, atol=atol)


# The device code in a child that cannot import packager, torch, transformers or librosa: loaded from
# targets/run.py as a bundle's run.py is, it computes a second of features and lists what it imported.
ISOLATED = r"""
import importlib.util, json, sys
import numpy as np
spec = importlib.util.spec_from_file_location("bundle_run", sys.argv[1])
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)
features, mask = getattr(run, sys.argv[3])(np.sin(np.arange(16000) / 10.0), {})
loaded = sorted(n for n, m in sys.modules.items() if m is not None and n.split(".")[0] in json.loads(sys.argv[2]))
print(json.dumps({"shape": list(features.shape), "valid": int(mask.sum()), "loaded": loaded}))
"""
BANNED = ["packager", "torch", "transformers", "librosa"]


def isolated(function: str, tmp_path: Path) -> dict[str, Any]:
    """run.py's `function` on a second of sound in a child that cannot import BANNED: the features' shape, the
    valid frames and what it imported of BANNED."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(f"import sys\nfor m in {BANNED!r}:\n    sys.modules[m] = None\n")
    run_py = Path(__file__).resolve().parents[1] / "targets" / "run.py"
    proc = subprocess.run([sys.executable, "-c", ISOLATED, str(run_py), json.dumps(BANNED), function], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(blocker)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result
