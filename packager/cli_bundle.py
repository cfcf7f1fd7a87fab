"""The CLI's commands on a finished bundle or a model file: `smoke` runs a bundle's own test, `keygen` makes
the key pair that signs bundles, `inspect` describes an ONNX model (or a bundle's) and which targets run it.
packager/cli.py registers them on the app."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from packager.cli_common import DebugOpt, JsonOpt, VerboseOpt, _guarded, _say, _timing, err
from packager.cli_print import _print_inspect, _print_smoke
from packager.errors import ExitCode, PackagerError
from packager.leftovers import temp_folder


@_timing("smoke")
def smoke(
    bundle: Path = typer.Argument(..., metavar="BUNDLE",
                                  help="A bundle archive (.tar.gz) or an unpacked bundle folder."),
    python: str | None = typer.Option(None, "--python", metavar="PYTHON",
                                      help="Interpreter to run it with [default: this one]."),
    emulate: bool = typer.Option(False, "--emulate", help="Run it on the device's arm64 Debian userland and CPU "
                                 "model under qemu (needs qemu-user-static; checks correctness, not speed)."),
    public_key: Path | None = typer.Option(None, "--public-key", metavar="FILE", envvar="PACKAGER_PUBLIC_KEY",
                                           help="Fail unless this Ed25519 public key signed the bundle (checked "
                                           "before any of it runs)."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
    debug: bool = DebugOpt,
) -> None:
    """Run a bundle's own smoke test in a fresh process and report its verdict."""
    from packager.smoke import run_smoke

    _say(verbose, as_json, f"python  = {python or sys.executable}  ({'--python' if python else 'this interpreter'})")
    if public_key is not None:
        origin = "PACKAGER_PUBLIC_KEY" if os.environ.get("PACKAGER_PUBLIC_KEY") == str(public_key) else "--public-key"
        _say(verbose, as_json, f"key     = {public_key}  ({origin})")

    result = _guarded(lambda: run_smoke(bundle, python, emulate=emulate, public_key=public_key), debug=debug,
                      as_json=as_json)
    if as_json:
        print(json.dumps({"bundle": result.bundle, "verdict": result.verdict, "exit_code": result.exit_code,
                          "report": result.report}))
    else:
        _print_smoke(result)
    if not result.passed:
        if not as_json:
            err.print(f"[red]error:[/] smoke test of {escape(str(bundle))} failed: {escape(result.verdict)}",
                      soft_wrap=True)
        raise typer.Exit(int(ExitCode.SMOKE_FAILED))


@_timing("keygen")
def keygen(
    private: Path = typer.Argument(..., metavar="PRIVATE",
                                   help="Where to write the private key (PEM, mode 0600); it stays on the build host."),
    public: Path | None = typer.Option(None, "--public", metavar="FILE",
                                       help="Where to write the public key [default: PRIVATE.pub]."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
    debug: bool = DebugOpt,
) -> None:
    """Make an Ed25519 key pair for `package --sign` (the .pub file goes on the devices). Never overwrites."""
    from packager.signing import keygen as make_keys

    private_path, public_path, fingerprint = _guarded(lambda: make_keys(private, public), debug=debug, as_json=as_json)
    _say(verbose, as_json, f"public key path from {'--public' if public else 'the default, PRIVATE.pub'}; "
                           "the fingerprint printed is the SHA-256 of the public key's raw 32 bytes")
    if as_json:
        print(json.dumps({"private_key": str(private_path), "public_key": str(public_path),
                          "public_key_sha256": fingerprint}))
        return
    err.print(f"private key {escape(str(private_path))} (keep it secret; sign with `packager package --sign "
              f"{escape(str(private_path))}`)", soft_wrap=True)
    err.print(f"public key  {escape(str(public_path))} "
              "(install it on the devices; set PACKAGER_PUBLIC_KEY to its path)", soft_wrap=True)
    print(fingerprint)


@_timing("inspect")
def inspect_model(
    model: str = typer.Argument(..., metavar="MODEL",
                                help="An .onnx file, a folder holding model.onnx, a bundle (.tar.gz or unpacked), "
                                "or a Hugging Face folder or sample:NAME (exported first, as package does)."),
    target: list[str] = typer.Option([], "--target", "-t", metavar="NAME", help="Check this target's runtime "
                                     "(repeatable) [default: every profile]. Exit 11 if its runtime cannot run the "
                                     "model."),
    top: int = typer.Option(15, "--top", min=1, metavar="N", help="Operators shown in the table (--json lists all)."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
    debug: bool = DebugOpt,
) -> None:
    """Inputs, outputs, parameters, size, opsets and operators of an ONNX model, and which targets run it."""
    _say(verbose, as_json, f"targets = {', '.join(target)}  (--target)" if target else
         "targets = every built-in profile  (no --target)")

    def go() -> Any:
        from packager.inspection import inspect as inspect_onnx
        from packager.profiles import builtin_profiles, resolve_target

        profiles = [resolve_target(t) for t in target] or list(builtin_profiles().values())
        with temp_folder("inspect") as tmp:
            path, shown, bundle = _inspect_path(model, Path(tmp), profiles[0] if profiles else None)
            result = inspect_onnx(path, profiles, model=str(model))
        return result, shown, bundle

    result, shown, bundle = _guarded(go, debug=debug, as_json=as_json)
    summary = result.to_dict() | {"path": shown} | ({"bundle": bundle} if bundle else {})
    if as_json:
        print(json.dumps(summary))
    else:
        _print_inspect(summary, top)
    if target:  # asked about these targets: say no with an exit code
        failed = [c for c in result.compatibility if not c.ok]
        for c in failed:
            err.print(f"[red]error:[/] {escape(c.message())}", soft_wrap=True)
        if any(c.status == "incompatible" for c in failed):
            raise typer.Exit(int(ExitCode.RUNTIME_INCOMPATIBLE))
        if failed:
            raise typer.Exit(int(ExitCode.BAD_PROFILE))


def _inspect_path(spec: str, tmp: Path, profile: Any) -> tuple[Path, str, dict[str, Any] | None]:
    """The .onnx file MODEL names, how to show it, and the bundle's manifest summary when it is a bundle.
    A Hugging Face folder or a sample goes through packager's source and export stages first."""
    from packager.bundles import is_bundle, open_bundle
    from packager.profiles import resolve_target
    from packager.stage_runner import export_reference

    model = Path(spec)
    if spec.startswith("sample:") or (model.is_dir() and (model / "config.json").is_file()
                                      and not list(model.glob("*.onnx"))):
        path = export_reference(spec, profile or resolve_target("rpi5"), tmp)
        part = f"; its {path.name}: an encoder-decoder's decoder" if path.name != "model.onnx" else ""
        return path, f"{spec} (exported by packager, fp32{part})", None
    if not model.exists():
        raise PackagerError(f"{model}: no such file or folder; check the path.", ExitCode.BAD_INPUT)
    if is_bundle(model):
        bundle = open_bundle(model, tmp)
        shown = f"{model} (model/model.onnx)" if model.is_file() else str(bundle.model)
        return bundle.model, shown, bundle.summary
    shown = str(model)
    if model.is_file():
        if model.suffix != ".onnx":
            raise PackagerError(f"{model}: not an .onnx file or a bundle archive (.tar.gz); pass one of those.",
                                ExitCode.BAD_INPUT)
        return model, shown, None
    onnx_files = sorted(model.glob("*.onnx"))
    if (model / "model.onnx").is_file() or len(onnx_files) == 1:
        path = model / "model.onnx" if (model / "model.onnx").is_file() else onnx_files[0]
        return path, str(path), None
    what = f"{len(onnx_files)} .onnx files" if onnx_files else "no .onnx file"
    raise PackagerError(f"{model}: a folder with {what} and no model.onnx; pass the .onnx file itself.",
                        ExitCode.BAD_INPUT)
