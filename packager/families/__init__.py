"""Model families, by the io kind a manifest names them with (modelled on optimum's model_configs: one class per
model kind, registered, owning its inputs and outputs).

    family = family_for(ctx.io.kind)
    family.make_samples(ctx, rt)              # the samples verify, fit and the smoke test run
    family.verify(ctx, rt, reference, packaged)   # against the fp32 reference: ctx.accuracy, exit 4 below it
    family.smoke_limits(profile.accuracy)     # the smoke test's thresholds
    family.generates, family.needs_tokenizer, family.context_sized, family.eval_cases ...   # its facts

The stages, the manifest, the runtime and --fit auto ask the family and never test a kind's name; a new family
is a class in a module here, an entry in FAMILIES, and its record in targets/runtime/families.py (the device
side, which cannot import packager). The registry loads no numpy or onnx: the heavy steps import their
modules (verification.py, media.py) when they run.
"""

from __future__ import annotations

import json
import sys
from types import ModuleType
from typing import Any

from packager.errors import ExitCode, PackagerError, did_you_mean
from packager.families.base import Export, Family
from packager.families.decoder import DecoderLLM
from packager.families.encoders import TensorModel, TextEncoder
from packager.families.seq2seq import EncoderDecoder
from packager.records import Io

__all__ = ["FAMILIES", "Export", "Family", "describe_io", "described", "family_for", "family_of_task",
           "io_modules"]

FAMILIES: dict[str, Family] = {f.name: f for f in (TextEncoder(), TensorModel(), DecoderLLM(), EncoderDecoder())}
# Which family an export is: the first that claims it, the most specific first (a decoder also takes token
# inputs; a tensor model is any graph).
CLAIM_ORDER = ("seq2seq", "decoder", "text", "tensor")


def family_for(kind: str) -> Family:
    """The family of a model whose io (manifest runtime.io) has this `kind`."""
    if kind not in FAMILIES:   # an io description edited by hand, or from a newer packager
        hint = did_you_mean(str(kind), list(FAMILIES))
        raise PackagerError(f"the model's io names an unknown model kind {kind!r}{hint}; packager knows "
                            f"{', '.join(FAMILIES)}: export the model again (--no-cache).", ExitCode.BAD_INPUT)
    return FAMILIES[kind]


def family_of_task(task: str) -> Family | None:
    """The family whose models an export task makes whatever their graph (Family.tasks); None where the graph says."""
    return next((f for f in FAMILIES.values() if task in f.tasks), None)


def describe_io(export: Export) -> dict[str, Any]:
    """The manifest's runtime.io of an fp32 export, as the family it belongs to describes it."""
    family = next(FAMILIES[name] for name in CLAIM_ORDER if FAMILIES[name].claims(export))
    return family.describe_io(export)


def described(export: Export) -> Io:
    """describe_io's description as the manifest's record, read as a cache hit reads it back (JSON): a run that
    exported and one that reused the export (or a runtime that built its own graph) write the same manifest."""
    return Io.from_dict(json.loads(json.dumps(describe_io(export))))


def io_modules() -> list[ModuleType]:
    """The modules whose code describes an export's io (this registry, the base class, each family's): the
    export stage's cache key hashes them, so that a change to a family's io invalidates cached exports."""
    names = [__name__, Family.__module__, *sorted({type(f).__module__ for f in FAMILIES.values()})]
    return [sys.modules[name] for name in names]
