"""Decoder memory: check at a context, the KV cache really resident in the measurement, and
--fit auto shrinking the context until the model fits. In-process, on a tiny random Llama whose
KV cache (4 KiB a token) outweighs its weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import onnxruntime_profile, unpack
from packager.cli import app
from packager.config import resolve_package_settings
from packager.errors import ExitCode, PackagerError
from packager.estimate import runtime_base
from packager.fit_auto import MIN_CONTEXT
from packager.options import PackageOptions
from packager.pipeline import package
from packager.profiles import resolve_target
from tiny_decoders import make_decoder

pytestmark = pytest.mark.integration

MiB = 2**20
LAYERS, KV_HEADS, HEAD_DIM = 2, 16, 16
KV_PER_TOKEN = 2 * LAYERS * KV_HEADS * HEAD_DIM * 4  # key and value, fp32


@pytest.fixture(scope="module")
def long_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_decoder(tmp_path_factory.mktemp("long-llama"), "llama", hidden_size=KV_HEADS * HEAD_DIM,
                        num_hidden_layers=LAYERS,
                        num_attention_heads=KV_HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=8192)


def _fp32_only(tmp_path: Path) -> Path:
    """rpi5 with --fit auto trying fp32 alone for decoders: one recipe keeps the test short."""
    old = 'decoder_fit_recipes = ["fp32", "int8-dynamic", "int4-mixed"]'
    return onnxruntime_profile(tmp_path / "fp32-only", **{old: 'decoder_fit_recipes = ["fp32"]'})


def _fit_auto(folder: Path, tmp_path: Path, budget_bytes: int, context: int):
    settings = resolve_package_settings({"target": str(_fp32_only(tmp_path)), "budget": str(budget_bytes),
                                         "out": str(tmp_path / "dist")})
    return package(str(folder), settings, PackageOptions(fit="auto", context=context))


def test_check_measures_a_decoder_at_the_asked_context(long_llama: Path) -> None:
    rpi5 = str(onnxruntime_profile(long_llama.parent / "profiles"))   # decoders on onnxruntime
    result = CliRunner().invoke(app, ["check", str(long_llama), "--target", rpi5, "--recipe", "fp32",
                                      "--context", "2048", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["context"] == 2048 and r["fits"] is True
    est, measured = r["estimate"], r["measured"]
    assert est["breakdown"]["kv_cache"] == KV_PER_TOKEN * 2048
    # The prompt's last chunk holds the past (8 MiB) and returns the presents (8 MiB more): the run phase shows
    # both, the past resident (a cache of untouched zero pages would not count).
    assert measured["run_peak_bytes"] - measured["load_peak_bytes"] > 1.5 * KV_PER_TOKEN * 2048
    assert est["low_bytes"] <= measured["peak_bytes"] * 1.02 and measured["peak_bytes"] <= est["high_bytes"]


def test_fit_auto_shrinks_the_context_until_the_decoder_fits(long_llama: Path, tmp_path: Path) -> None:
    # Past and presents are 2 x 4 KiB a token, and the prompt's last chunk holds a layer's scores, 16 heads x 4
    # bytes a position, about 5 times: 64 tokens at 4096, 32 at 8192 (decoder_config.prefill_chunk). Measured 109
    # MiB over the runtime base at 4096, 145 at 8192 (`packager check --context N`: 203 at 8192 with a chunk of 64).
    budget = runtime_base(resolve_target("rpi5"), "decoder")[0] + 127 * MiB
    ctx = _fit_auto(long_llama, tmp_path, budget, 8192)
    assert ctx.fit is not None and ctx.fit.chosen == "fp32" and ctx.fit.context == 4096 == ctx.context
    assert [(t["recipe"], t["context"]) for t in ctx.fit.tried] == [("fp32", 8192), ("fp32", 4096)]
    assert "does not fit" in ctx.fit.tried[0]["outcome"] and "no recipe fits 8192 tokens" in (ctx.fit.why or "")
    assert ctx.fit.predicted_peak_bytes is not None and ctx.fit.predicted_peak_bytes["fp32"]["4096"] <= budget
    bundle = unpack(ctx.archive, tmp_path / "unpacked")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["runtime"]["context"] == manifest["memory"]["context"] == 4096
    assert manifest["recipe"]["fit"]["context"] == 4096 and manifest["memory"]["fits"] is True
    assert ctx.memory is not None and ctx.memory.measured_peak_bytes is not None
    assert ctx.memory.measured_peak_bytes <= budget   # measured figures vary run to run: not in the manifest


def test_fit_auto_gives_up_below_the_context_floor(long_llama: Path, tmp_path: Path) -> None:
    budget = runtime_base(resolve_target("rpi5"), "decoder")[0] + MiB  # the runtime and next to nothing
    with pytest.raises(PackagerError) as e:
        _fit_auto(long_llama, tmp_path, budget, 8192)
    assert e.value.code == ExitCode.DOES_NOT_FIT
    assert f"nor at any shorter down to {MIN_CONTEXT}" in e.value.message and "fp32 at 8192 tokens" in e.value.message
    assert not (tmp_path / "dist").exists()
