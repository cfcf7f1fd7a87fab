"""verify's gate for a multimodal decoder's images and audio (packager/families/soft_verification.py): each
generated sample file through the packaged encoder and decoder against the fp32 export's, by the text gate's
thresholds. Here the two pipelines are stand-ins whose answers are set, so that the rule itself is what is checked:
a packaged pipeline that keeps the reference's tokens passes with its figures, one that loses them is exit 4 naming
the file."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from packager.device_code import runner
from packager.errors import ExitCode, PackagerError
from packager.families import soft_verification

VOCAB, TOKENS = 12, [3, 5, 7, 2]


class Decoder:
    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits

    def generate(self, ids: list[int], n: int, soft: Any = None) -> tuple[list[int], np.ndarray]:
        return TOKENS, self.logits[0]


def pipeline(logits: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(decoder=Decoder(logits), runtime={"io": {}})


def rt(packaged_logits: np.ndarray) -> SimpleNamespace:
    device = runner()
    return SimpleNamespace(write_png=device.write_png, write_wav=device.write_wav,
                           prompt_with=lambda r, prompt, paths: ([0, 1, 9, 9, 2], "soft"),
                           score_from=lambda decoder, ids, start, soft: packaged_logits, followed=device.followed)


def context(tmp_path: Path, modes: tuple[str, ...]) -> SimpleNamespace:
    limits = SimpleNamespace(min_token_agreement=0.9, min_logits_cosine=0.95)
    return SimpleNamespace(io=SimpleNamespace(soft={"encoders": {m: {} for m in modes}}), stage_dir=tmp_path,
                           profile=SimpleNamespace(name="rpi5", accuracy=limits), recipe_name="int4",
                           reference_model=tmp_path / "model.onnx", progress=lambda line: None)


def one_hot(tokens: list[int]) -> np.ndarray:
    logits = np.zeros((len(tokens), VOCAB), np.float32)
    logits[np.arange(len(tokens)), tokens] = 5.0
    return logits


def test_the_packaged_pipeline_keeps_the_references_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = one_hot(TOKENS)
    monkeypatch.setattr(soft_verification, "fp32_runner", lambda ctx, rt, spec: pipeline(reference))
    figures = soft_verification.verify_media(context(tmp_path, ("image", "audio")), rt(reference + 0.01),
                                             pipeline(reference))
    assert set(figures) == {"picture.png", "tone.wav"}
    assert all(f["token_agreement"] == 1.0 and f["logits_cosine"] > 0.99 for f in figures.values())
    assert (tmp_path / "samples" / "media" / "picture.png").is_file()


def test_a_packaged_pipeline_that_loses_the_tokens_is_exit_4_naming_the_file(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    reference = one_hot(TOKENS)
    monkeypatch.setattr(soft_verification, "fp32_runner", lambda ctx, rt, spec: pipeline(reference))
    wrong = one_hot([3, 5, 1, 1])   # half the tokens, the first logits the same
    with pytest.raises(PackagerError) as e:
        soft_verification.verify_media(context(tmp_path, ("image",)), rt(wrong), pipeline(reference))
    assert e.value.code == ExitCode.ACCURACY and "picture.png" in str(e.value) and "50.0%" in str(e.value)


def test_a_decoder_without_encoders_is_not_judged_on_media(tmp_path: Path) -> None:
    ctx = context(tmp_path, ())
    assert soft_verification.verify_media(ctx, rt(one_hot(TOKENS)), pipeline(one_hot(TOKENS))) == {}
    assert not (tmp_path / "samples").exists()
