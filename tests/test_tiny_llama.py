"""sample:tiny-llama (a small Llama trained briefly on English prose) through the whole LLM path on onnxruntime:
int4 on rpi5 (without its [decoder_runtime]), fp16 on Jetson; each bundle generates text and passes its smoke test.
The phone's decoders run on onnxruntime-genai, as rpi5's: tests/test_genai_runtime.py packages the phone's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import onnxruntime_profile, unpack
from packager.config import resolve_package_settings
from packager.errors import ExitCode, PackagerError
from packager.pipeline import package

PARAMETERS = 2_885_888   # packager/data/tiny-llama/README.md
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    out = tmp_path_factory.mktemp("tiny-llama")
    result = {}
    for target in ("rpi5", "jetson-orin-nano"):
        spec = str(onnxruntime_profile(out / "profiles")) if target == "rpi5" else target   # the onnxruntime path
        settings = resolve_package_settings({"target": spec, "out": str(out / "dist"), "recipe": None,
                                             "budget": None})
        ctx = package("sample:tiny-llama", settings)
        result[target] = (ctx, unpack(ctx.archive, out / target))
    return result


@pytest.mark.parametrize("target, recipe", [("rpi5", "int4"), ("jetson-orin-nano", "fp16")])
def test_bundle_generates_and_passes_its_smoke_test(bundles: dict, target: str, recipe: str) -> None:
    ctx, bundle = bundles[target]
    assert ctx.recipe_name == recipe and ctx.io.kind == "decoder"
    assert ctx.context == 512   # the profile's 4K/8K, within the model's 512 positions
    proc = subprocess.run([sys.executable, str(bundle / "run.py"), "--prompt", "The function returns",
                           "--max-new-tokens", "12"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.strip()
    assert text.startswith("The function returns") and len(text.split()) >= 6
    smoke = subprocess.run([sys.executable, str(bundle / "smoke_test.py")], capture_output=True, text=True,
                           timeout=120)
    assert smoke.returncode == 0 and smoke.stdout.splitlines()[-1] == "PASS", smoke.stdout
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["accuracy"]["metric"] == "token agreement"
    assert manifest["accuracy"]["token_agreement"] >= manifest["smoke"]["min_token_agreement"]


def test_bare_texts_are_prompts_to_continue(bundles: dict) -> None:
    """`python run.py "text"`, the README's way to try a bundle, continues each text on an LLM bundle
    (it raised KeyError: 'position_ids' there) and says the same as --prompt."""
    _, bundle = bundles["rpi5"]
    run = [sys.executable, str(bundle / "run.py"), "--max-new-tokens", "8"]
    bare = subprocess.run([*run, "--json", "The function returns", "A list of"], capture_output=True, text=True,
                          timeout=120)
    assert bare.returncode == 0, bare.stderr
    answers = json.loads(bare.stdout)
    assert [a["prompt"] for a in answers] == ["The function returns", "A list of"]
    prompted = subprocess.run([*run, "--json", "--prompt", "A list of"], capture_output=True, text=True, timeout=120)
    assert prompted.returncode == 0, prompted.stderr
    assert json.loads(prompted.stdout)["tokens"] == answers[1]["tokens"] and answers[1]["tokens"]


def test_int4_size_approaches_half_a_byte_per_parameter(bundles: dict) -> None:
    ctx, bundle = bundles["rpi5"]
    size = (bundle / "model" / "model.onnx").stat().st_size
    # 4 bits per weight (embedding and lm_head once: tied) plus an fp32 scale per block of 32:
    # 0.5 + 4/32 = 0.625 bytes per parameter, and the small float tensors (norms).
    assert PARAMETERS * 0.5 < size < PARAMETERS * 0.75
    assert ctx.recipe.params["embedding"].startswith("int4, tied")


def test_fp16_keeps_the_greedy_tokens(bundles: dict) -> None:
    ctx, _ = bundles["jetson-orin-nano"]
    assert ctx.accuracy.more["token_agreement"] >= 0.99 and ctx.accuracy.more["min_logits_cosine"] > 0.9999


def test_verify_refuses_a_recipe_below_the_profile_threshold(tmp_path: Path) -> None:
    profile = onnxruntime_profile(tmp_path, **{"min_token_agreement = 0.9 ": "min_token_agreement = 1.0 "})
    settings = resolve_package_settings({"target": str(profile), "out": str(tmp_path / "dist"), "recipe": "int4",
                                         "budget": None})
    with pytest.raises(PackagerError, match=r"predicts .* of the fp32 reference's greedy tokens") as e:
        package("sample:tiny-llama", settings)
    assert e.value.code == ExitCode.ACCURACY
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())
