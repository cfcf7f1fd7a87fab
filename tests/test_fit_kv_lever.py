"""--fit auto's KV cache lever (packager/fit_auto.py): recipes, then the runtime's smallest KV cache, then the context.
The search itself, over a table of outcomes in place of the stages (each try of the real pipeline takes a build and a
measurement: tests/test_genai_runtime.py runs one end to end); milliseconds each."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest

from packager import fit_auto
from packager.errors import ExitCode, PackagerError
from packager.options import PackageOptions
from packager.profiles import Profile, resolve_target
from packager.progress import Reporter
from packager.records import Fit
from packager.runtimes import runtime_for
from packager.stages import fit as fit_stage

MiB = 2**20
BUDGET = 1000 * MiB
WEIGHTS = {"fp32": 900 * MiB, "int4-mixed": 500 * MiB}
# A token of KV cache: genai's 16-bit one (rpi5's), the int8 one with its copies (half of it here), and the onnxruntime
# path's fp32 one, sized as genai's so that both paths meet the same arithmetic.
PER_TOKEN = {"float16": 200 * 1024, "int8": 100 * 1024, "float": 200 * 1024}


def _genai() -> Profile:
    """rpi5 as a decoder on onnxruntime-genai gets it (its 16-bit KV cache), with BUDGET."""
    p = resolve_target("rpi5").with_decoder_runtime()
    return dataclasses.replace(p, budget=dataclasses.replace(p.budget, memory_bytes=BUDGET))


def _kv(profile: Profile) -> str:
    return profile.session.config.get("genai.kv_cache", "float")


class Search:
    """The pipeline as --fit auto sees it: each try's verdict from the peaks above and the recipes that `wrong` says
    change the answers ((recipe, kv cache) pairs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, wrong: frozenset[tuple[str, str]] = frozenset()) -> None:
        self.wrong = wrong
        self.calls: list[tuple[str, int, str | None, bool]] = []   # recipe, context, kv, measured again only
        monkeypatch.setattr(fit_auto, "_try_recipe", self.try_recipe)
        monkeypatch.setattr(fit_stage, "peaks_at", self.peaks_at)

    def peak(self, recipe: str, context: int, kv: str) -> int:
        return WEIGHTS[recipe] + context * PER_TOKEN[kv]

    def try_recipe(self, ctx: Any, reporter: Reporter, recipe: str, stages: tuple[str, ...] = ("quantize",),
                   kv: str | None = None) -> PackagerError | None:
        # the record says the cache the profile builds: None, its own (not the lever's int8), or the one named
        assert kv == (None if _kv(ctx.profile) != "int8" else "int8")
        fit_only = stages == ("fit",)
        assert not fit_only or ctx.recipe_name == recipe
        ctx.recipe_name = recipe
        self.calls.append((recipe, ctx.context, kv, fit_only))
        entry = {"recipe": recipe, "context": ctx.context, **({"kv_cache": kv} if kv else {})}
        if (recipe, _kv(ctx.profile)) in self.wrong:
            error = PackagerError("answers changed", ExitCode.ACCURACY)
        elif self.peak(recipe, ctx.context, _kv(ctx.profile)) > ctx.profile.budget.memory_bytes:
            error = PackagerError("does not fit", ExitCode.DOES_NOT_FIT)
        else:
            ctx.fit.tried.append(entry | {"outcome": "fits and passes verify"})
            return None
        ctx.fit.tried.append(entry | {"outcome": error.message})
        return error

    def peaks_at(self, ctx: Any, contexts: list[int]) -> dict[int, int]:
        return {c: self.peak(ctx.recipe_name, c, _kv(ctx.profile)) for c in contexts}


def _ctx(profile: Profile, context: int, kv_bits: int | None = None) -> Any:
    return SimpleNamespace(profile=profile, context=context, io=SimpleNamespace(kind="decoder"), recipe_name="",
                           fit=None, options=PackageOptions(kv_bits=kv_bits))


def _search(ctx: Any) -> Fit:
    fit_auto.choose_recipe(ctx, Reporter(quiet=True), ("fp32", "int4-mixed"))
    assert ctx.fit is not None
    return ctx.fit  # type: ignore[no-any-return]


def test_the_int8_cache_comes_before_a_shorter_context(monkeypatch: pytest.MonkeyPatch) -> None:
    # 4096 tokens: int4-mixed 500 + 800 MiB of 16-bit cache, over; with the int8 cache 500 + 400, in
    search = Search(monkeypatch)
    ctx = _ctx(_genai(), 4096)
    record = _search(ctx)
    assert search.calls == [("fp32", 4096, None, False), ("int4-mixed", 4096, None, False),
                            ("fp32", 4096, "int8", False), ("int4-mixed", 4096, "int8", False)]
    assert (record.chosen, record.context, record.kv_cache) == ("int4-mixed", 4096, "int8")
    assert _kv(ctx.profile) == "int8" and ctx.context == 4096   # the bundle is built and recorded with it
    assert "with an int8 one, the runtime's smallest" in (record.why or "") and record.to_dict()["kv_cache"] == "int8"
    assert [t.get("kv_cache") for t in record.tried] == [None, None, "int8", "int8"]


def test_a_runtime_without_the_lever_halves_the_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """The onnxruntime path's exported graph has no smaller cache to offer: straight to the context."""
    search = Search(monkeypatch)
    base = resolve_target("rpi5")   # its [runtime]: onnxruntime
    profile = dataclasses.replace(base, budget=dataclasses.replace(base.budget, memory_bytes=BUDGET))
    assert runtime_for(profile).smaller_kv_cache(profile) is None
    record = _search(_ctx(profile, 4096))
    assert [c[:3] for c in search.calls] == [("fp32", 4096, None), ("int4-mixed", 4096, None),
                                             ("int4-mixed", 2048, None)]
    assert (record.chosen, record.context, record.kv_cache) == ("int4-mixed", 2048, None)


def test_a_cache_the_user_chose_with_kv_bits_is_kept_and_the_context_halves(monkeypatch: pytest.MonkeyPatch) -> None:
    """--kv-bits 16 chose rpi5's 16-bit cache: --fit auto does not swap it for the int8 one, it shortens the context."""
    search = Search(monkeypatch)
    ctx = _ctx(_genai(), 4096, kv_bits=16)
    record = _search(ctx)
    assert [c[:3] for c in search.calls] == [("fp32", 4096, None), ("int4-mixed", 4096, None),
                                             ("int4-mixed", 2048, None)]
    assert (record.chosen, record.context, record.kv_cache) == ("int4-mixed", 2048, None)
    assert _kv(ctx.profile) == "float16"


def test_the_context_halves_with_the_int8_cache_where_it_still_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    # 8192 tokens: int4-mixed with the int8 cache 500 + 800, over; at 4096, 500 + 400: in, measured again only
    search = Search(monkeypatch)
    ctx = _ctx(_genai(), 8192)
    record = _search(ctx)
    assert search.calls[-1] == ("int4-mixed", 4096, "int8", True)
    assert (record.chosen, record.context, record.kv_cache) == ("int4-mixed", 4096, "int8")
    assert "nor with the runtime's smallest KV cache" in (record.why or "")


def test_an_int8_cache_that_changes_the_answers_leaves_the_profiles_one(monkeypatch: pytest.MonkeyPatch) -> None:
    search = Search(monkeypatch, wrong=frozenset({("fp32", "int8"), ("int4-mixed", "int8")}))
    ctx = _ctx(_genai(), 4096)
    record = _search(ctx)
    # at 2048 with the 16-bit cache, int4-mixed (500 + 400) fits; it was last built with int8: built again
    assert search.calls[-1] == ("int4-mixed", 2048, None, False)
    assert (record.chosen, record.context, record.kv_cache) == ("int4-mixed", 2048, None)
    assert _kv(ctx.profile) == "float16"


def test_nothing_fits_is_exit_3_naming_what_was_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    Search(monkeypatch)
    profile = _genai()
    tight = dataclasses.replace(profile, budget=dataclasses.replace(profile.budget, memory_bytes=400 * MiB))
    with pytest.raises(PackagerError) as e:
        _search(_ctx(tight, 4096))
    assert e.value.code == ExitCode.DOES_NOT_FIT
    assert "int4-mixed at 4096 tokens with an int8 KV cache: does not fit" in e.value.message
    assert f"nor at any shorter down to {fit_auto.MIN_CONTEXT}" in e.value.message
