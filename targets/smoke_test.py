#!/usr/bin/env python3
"""The bundle's own smoke test: does this model start and answer right on this device?

    python smoke_test.py [--json] [--public-key PATH]

0. with a public key configured (--public-key, or $PACKAGER_PUBLIC_KEY): the publisher's
   signature over manifest.json and every file's sha256 in it; an unsigned bundle, one signed
   with another key, one altered after signing, or one holding a file the signed manifest does
   not list fails;
1. every file's checksum against SHA256SUMS and the manifest, and nothing else in the folder
   (no file, link or folder that they do not list: a virtual environment goes outside it);
2. load the model with the target's providers (falling back to CPU where they are missing,
   and saying so);
3. run the sample inputs (texts go through the shipped tokenizer) and compare with the fp32
   reference model's outputs recorded when the bundle was built, against the profile's threshold
   (the device's own kernels may round differently from the build host's: what must hold is the
   distance to the true model); decoders generate with the KV cache from the sample prompts and
   must follow the reference's greedy tokens (teacher-forced agreement, first-token logits);
   encoder-decoders read their raw samples (WAV, PNG, texts) end to end, encoder and decoder loop;
4. bundles built with `--eval`: the first of the user's own cases (samples/eval.jsonl) must score
   within the profile's tolerance of what the packaged model scored on the build host;
5. peak resident memory of load and run against the target's budget.

A bundle of several models (`packager package A B`: models/<name>/, the component files in blobs/
by hash) loads them all in this one process, as an app holding them together would, checks each
one's outputs as above, and holds the peak of them all to the budget.

The last line is the verdict: `PASS`, or `FAIL: <reason>`. Exit code 0 only on pass.
Depends on onnxruntime, numpy and the standard library (and tokenizers for text models).
"""

# No `from __future__ import annotations`: it imports the module `__future__` at run time, before the
# lines below could take the bundle's folder off sys.path.
import sys

if __name__ == "__main__" and sys.path and not getattr(sys.flags, "safe_path", False):
    # `python smoke_test.py` puts this file's folder first on sys.path: a numpy.py or json.py added to
    # the bundle would be imported before the check below could refuse it. Nothing is imported from
    # the bundle's folder; run.py is read from its file.
    del sys.path[0]
sys.dont_write_bytecode = True  # leave the bundle exactly as its checksums say

import argparse  # noqa: E402
import json  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

HERE = Path(__file__).resolve().parent


def _load_runner() -> types.ModuleType:
    """The run.py beside this file, compiled from its source: never a cached .pyc from __pycache__ (a
    file no checksum covers), and without this folder on sys.path."""
    path = HERE / "run.py"
    module = types.ModuleType("run")
    module.__file__ = str(path)
    sys.modules["run"] = module   # before it runs: what imports `run` (an app, a test) finds this one
    exec(compile(path.read_bytes(), str(path), "exec"), module.__dict__)
    return module


run = _load_runner()

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class SmokeFailure(Exception):
    pass


def check_generation(bundle: Path, runner: run.Runner, manifest: run.Manifest) -> dict[str, Any]:
    assert runner.decoder is not None
    prompts = json.loads((bundle / run.SAMPLE_TEXTS).read_text(encoding="utf-8"))
    expected = run.load_samples(bundle, run.SAMPLE_EXPECTED)
    for i, (prompt, sample) in enumerate(zip(prompts, expected)):
        if runner.prompt_ids(prompt) != [int(t) for t in sample["prompt_ids"]]:
            raise SmokeFailure(f"the tokenizer here encodes prompt {i} differently from the build host")
    result = _gate(run.compare_decoder(expected, runner.decoder), manifest)
    media = bundle / MEDIA_EXPECTED
    return result | ({"media": check_media(bundle, runner, manifest)} if media.is_file() else {})


MEDIA_EXPECTED = "samples/media/expected.json"   # a multimodal decoder's sample files and the fp32 export's tokens


def check_media(bundle: Path, runner: run.Runner, manifest: run.Manifest) -> dict[str, Any]:
    """A multimodal decoder's sample files (a picture, a tone) read here, each through its encoder loaded for it and
    the decoder: the same prompt ids as on the build host, and the fp32 export's greedy tokens predicted."""
    import numpy as np

    firsts = np.load(bundle / "samples" / "media" / "expected.npz")
    figures = {}
    for entry in json.loads((bundle / MEDIA_EXPECTED).read_text(encoding="utf-8")):
        path = bundle / "samples" / entry["file"]
        ids, soft = run.prompt_with(runner, entry["prompt"], [path])
        if ids != entry["prompt_ids"]:
            raise SmokeFailure(f"{entry['file']} reads here as other prompt ids than on the build host (the "
                               "pre-processing or the encoder's output length differs)")
        logits = run.score_from(runner.decoder, ids + entry["tokens"], len(ids), soft)
        agreement, cosine = run.followed(logits, entry["tokens"], firsts[path.name])
        figures[path.name] = _gate({"token_agreement": agreement, "min_logits_cosine": cosine}, manifest)
    return figures


def check_seq2seq(bundle: Path, runner: run.Runner, manifest: run.Manifest) -> dict[str, Any]:
    """An encoder-decoder end to end: the raw samples (WAV, PNG or texts) through this device's
    pre-processing, which must give the build host's encoder inputs, then the encoder and the decoder's
    loop, which must follow the fp32 reference's greedy tokens."""
    import numpy as np

    stored = run.load_samples(bundle, run.SAMPLE_INPUTS)
    expected = run.load_samples(bundle, run.SAMPLE_EXPECTED)
    feeds = [runner.encoder_feeds(raw) for raw in run.sample_media(bundle)]
    for i, (got, kept) in enumerate(zip(feeds, stored)):
        # float pre-processing (FFT, resizing) may round differently on another CPU or numpy: close, not equal
        if any(got[k].shape != kept[k].shape or not np.allclose(got[k], kept[k], rtol=1e-4, atol=1e-4) for k in kept):
            raise SmokeFailure(f"the pre-processing here turns sample {i} into other encoder inputs than on the "
                               "build host")
    return _gate(run.compare_decoder(expected, [runner.encoded(f) for f in feeds]), manifest)


def _gate(result: dict[str, Any], manifest: run.Manifest) -> dict[str, Any]:
    limits = manifest.smoke
    if limits.min_token_agreement is None or limits.min_logits_cosine is None:
        raise SmokeFailure(f"{run.MANIFEST} has no smoke.min_token_agreement or smoke.min_logits_cosine for this "
                           "decoder; rebuild the bundle with packager")
    if result["token_agreement"] < limits.min_token_agreement:
        raise SmokeFailure(f"generation drifts from the fp32 reference: {result['token_agreement']:.1%} of its greedy "
                           f"tokens predicted < {limits.min_token_agreement:.0%}")
    if result["min_logits_cosine"] < limits.min_logits_cosine:
        raise SmokeFailure(f"logits drift from the fp32 reference: cosine {result['min_logits_cosine']:.5f} < "
                           f"{limits.min_logits_cosine}")
    return result


def check_outputs(bundle: Path, runner: run.Runner, manifest: run.Manifest) -> dict[str, Any]:
    io = runner.io   # the manifest's runtime.io, as read_runtime checked it
    family = run.family(io)
    if family.prompted:
        return check_generation(bundle, runner, manifest)
    if family.media:
        return check_seq2seq(bundle, runner, manifest)
    stored_inputs = run.load_samples(bundle, run.SAMPLE_INPUTS)
    expected = run.load_samples(bundle, run.SAMPLE_EXPECTED)
    if family.sentences:
        texts = json.loads((bundle / run.SAMPLE_TEXTS).read_text(encoding="utf-8"))
        feeds = [runner.encode(t) for t in texts]
        for i, (got, stored) in enumerate(zip(feeds, stored_inputs)):
            if any(not (got[k].shape == stored[k].shape and (got[k] == stored[k]).all()) for k in stored):
                raise SmokeFailure(f"the tokenizer here encodes sample {i} differently from the build host")
    else:
        feeds = stored_inputs
    actual = [runner.run(f) for f in feeds]
    result = run.compare(expected, actual, io["checked_outputs"])
    threshold = manifest.smoke.min_cosine
    if threshold is None:
        raise SmokeFailure(f"{run.MANIFEST} has no smoke.min_cosine; rebuild the bundle with packager")
    if result["min_cosine"] < threshold:
        raise SmokeFailure(
            f"outputs drift from the fp32 reference: cosine {result['min_cosine']:.5f} < {threshold}")
    return result


def check_eval(bundle: Path, runner: run.Runner, gate: run.EvalGate) -> dict[str, Any]:
    """The user's eval cases shipped in the bundle, scored here against the build host's score."""
    cases = run.read_eval(bundle / gate.file)
    result = run.evaluate(runner.session, runner.io, runner.tokenizer, cases)
    report = {"score": result["score"], "passed": result["passed"], "cases": result["cases"],
              "build_host_score": gate.packaged_score, "min_score": gate.min_score}
    if result["score"] < gate.min_score - 1e-9:
        raise SmokeFailure(f"the eval cases drift: {result['passed']}/{result['cases']} pass here, where the packaged "
                           f"model passed {gate.packaged_score:.0%} of them on the build host (tolerance "
                           f"{gate.tolerance * 100:.4g}%)")
    return report


def check_model(bundle: Path, runner: run.Runner, manifest: run.Manifest) -> dict[str, Any]:
    """One model's outputs (and its eval cases) against what the build host recorded."""
    report = {"accuracy": check_outputs(bundle, runner, manifest)}
    if manifest.smoke.eval:
        report["eval"] = check_eval(bundle, runner, manifest.smoke.eval)
    return report


def smoke(bundle: Path, public_key: Path | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {"bundle": str(bundle)}
    try:
        report["signature"] = run.check_signature(bundle, public_key)
        manifest = run.read_manifest(bundle)
        report["files_checked"] = run.check_files(bundle, manifest)
        record = run.manifest_record(manifest)
        members = {name: run.load_manifest(folder) for name, folder in (run.members(bundle) or {}).items()}
    except ValueError as e:  # SignatureError, IntegrityError, a manifest that is not JSON or not of packager's shape
        raise SmokeFailure(str(e)) from None

    # Measured in this process, as the app would run: reset the kernel's high-water mark, load, run.
    run.reset_peak()
    folders = run.members(bundle)
    sessions: dict[str, Any] = {}   # a component several models load: one session
    runners = {name: run.load(folder, sessions) for name, folder in (folders or {"": bundle}).items()}
    first = next(iter(runners.values()))
    report["providers"] = first.providers
    report["missing_providers"] = first.missing_providers
    gpu = [p for p in first.runtime["providers"] if p in GPU_PROVIDERS]
    if gpu:
        report["gpu_path_exercised"] = any(p in first.providers for p in gpu)
    report["load_peak_bytes"] = run.peak_bytes()
    if folders is None:
        report |= check_model(bundle, first, record)
    else:
        report["models"] = {}
        for name, runner in runners.items():
            try:
                report["models"][name] = check_model(folders[name], runner, members[name])
            except SmokeFailure as e:
                raise SmokeFailure(f"{name}: {e}") from None
    report["peak_bytes"] = run.peak_bytes()

    budget = record.memory.budget_bytes
    report["budget_bytes"] = budget
    if report["peak_bytes"] > budget:
        raise SmokeFailure(f"peak memory {report['peak_bytes'] / 2**20:.0f} MiB is over the budget "
                           f"of {budget / 2**20:.0f} MiB")
    return report


def _one_line(text: str) -> str:
    """The verdict is the last line: a reason quoting a file name with a line break in it (from a
    damaged or hostile manifest) must not push a line of its own, such as "PASS", after it."""
    return " ".join(text.splitlines())


def _print_model(prefix: str, report: dict[str, Any]) -> None:
    accuracy = report.get("accuracy", {})
    if "token_agreement" in accuracy:
        print(f"{prefix}generation: {accuracy['token_agreement']:.1%} of the fp32 reference's greedy tokens, logits "
              f"cosine {accuracy['min_logits_cosine']:.5f}, {accuracy['identical_generations']}/{accuracy['prompts']} "
              "continuations identical")
    elif accuracy:
        print(f"{prefix}outputs: min cosine {accuracy['min_cosine']:.5f} vs the fp32 reference")
    for name, m in accuracy.get("media", {}).items():   # a multimodal decoder's sample files, their encoder loaded
        print(f"{prefix}{name}: {m['token_agreement']:.1%} of the fp32 export's greedy tokens, logits cosine "
              f"{m['min_logits_cosine']:.5f}")
    if "eval" in report:
        ev = report["eval"]
        print(f"{prefix}eval: {ev['passed']}/{ev['cases']} of the shipped eval cases pass (build host: "
              f"{ev['build_host_score']:.0%})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check this bundle on this device.")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line before the verdict")
    parser.add_argument("--public-key", type=Path, help="fail unless this Ed25519 public key signed the bundle "
                        f"(default: ${run.PUBLIC_KEY_ENV})")
    parser.add_argument("--bundle", type=Path, default=HERE,
                        help="check this bundle folder instead of the one this file sits in (run a trusted copy of "
                             "smoke_test.py against a bundle you have not verified yet)")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    try:
        report = smoke(args.bundle, run.configured_public_key(args.public_key))
        verdict = "PASS"
    except SmokeFailure as e:
        verdict = f"FAIL: {_one_line(str(e))}"
    except Exception as e:  # a runtime that cannot load or run the model is a failure too
        verdict = f"FAIL: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if args.json:
        print(json.dumps({**report, "verdict": verdict}))
    else:
        signature = report.get("signature", {})
        if signature.get("checked"):
            print(f"signature: verified with the configured key (sha256 {signature['public_key_sha256'][:16]}...)")
        elif signature.get("note"):
            print(f"note: {signature['note']}")
        for p in report.get("missing_providers", []):
            print(f"note: {p} is not available on this host; ran on {', '.join(report['providers'])} "
                  f"(the {p} path was not exercised)")
        if report.get("gpu_path_exercised") is False:
            print("note: the GPU path was not exercised on this host: the outputs and the peak memory below are the "
                  "CPU path's, without the GPU's own memory (CUDA context, TensorRT engine and workspace)")
        if "files_checked" in report:
            print(f"checksums: {report['files_checked']} files OK")
        for name, checked in (report.get("models") or {"": report}).items():
            _print_model(f"{name}: " if name else "", checked)
        if "peak_bytes" in report:
            print(f"peak memory: {report['peak_bytes'] / 2**20:.1f} MiB "
                  f"of {report['budget_bytes'] / 2**20:.0f} MiB budget")
    print(verdict)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
