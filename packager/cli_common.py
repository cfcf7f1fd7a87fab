"""What the `packager` commands share: the options they declare alike, the console for errors, failing with one
sentence and an exit code (errors are caught once, in `_guarded`), --verbose timing and the parsing of NAME=VALUE
options. The commands are in cli.py, how their results print in cli_print.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from packager import interrupts
from packager.errors import ExitCode, PackagerError, disk_full

err = Console(stderr=True, highlight=False)
MiB = 2**20


DebugOpt = typer.Option(False, "--debug", help="Show tracebacks.", envvar="PACKAGER_DEBUG")


JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout and nothing else.")


VerboseOpt = typer.Option(False, "--verbose", "-v", help="Say where each setting came from, and how long it took.")


TargetsOpt = typer.Option([], "--target", "-t", metavar="NAME", help="Target profile name or alias (see `packager "
                          "targets`), or a profile .toml; repeat it for several targets, one result each.")


AllTargetsOpt = typer.Option(False, "--all-targets", help="Every built-in target profile, one result each.")


BudgetOpt = typer.Option(None, "--budget", metavar="SIZE", help="Memory budget instead of the profile's, e.g. 1.2GB "
                         "or 900MiB [default: the profile's].")
KvBitsOpt = typer.Option(None, "--kv-bits", metavar="BITS", help="Decoders on onnxruntime-genai: the KV cache's "
                         "element size, 32 (fp32), 16 (fp16) or 8 (int8) [default: the profile's].")


ShapeOpt = typer.Option([], "--shape", metavar="NAME=D1,D2", help="Sample input shape for a tensor model "
                        "(repeatable).")


ValueOpt = typer.Option([], "--value", metavar="NAME=V", help="Fill a sample input with a value, e.g. sr=16000 "
                        "(repeatable).")


PickleOpt = typer.Option(False, "--allow-pickle", help="Accept pickled weights (.bin), loaded with torch's "
                         "weights-only loader.")


def _recipes() -> str:
    """The recipes, as help lists them: from the registry, which names them without loading onnx."""
    from packager.recipes import help_text

    return help_text()


def _samples() -> str:
    """The built-in samples, as help lists them: from the registry, so that none is left out."""
    from packager.samples import SAMPLES

    return ", ".join(f"sample:{name}" for name in SAMPLES)


def _timing(what: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A command that says, with --verbose, how long it took (however it ends)."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def timed(*args: Any, **kwargs: Any) -> None:
            with _timed(kwargs.get("verbose", False), kwargs.get("as_json", False), what):
                command(*args, **kwargs)

        return timed

    return decorate


def _say(verbose: bool, as_json: bool, line: str) -> None:
    """--verbose: a line for the human, on stderr (never with --json)."""
    if verbose and not as_json:
        err.print(escape(line), soft_wrap=True)


@contextlib.contextmanager
def _timed(verbose: bool, as_json: bool, what: str) -> Iterator[None]:
    """--verbose: how long the command took, however it ends."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _say(verbose, as_json, f"{what} took {time.perf_counter() - start:.1f}s")


def _interrupted(as_json: bool, message: str = "interrupted; nothing was written.") -> NoReturn:
    err.print(f"[red]error:[/] {message}")
    if as_json:
        print(json.dumps({"error": message, "exit_code": int(ExitCode.INTERRUPTED)}))
    sys.stdout.flush()
    sys.stderr.flush()
    # The interrupt has unwound through every stage's cleanup already. Leave now: the interpreter's
    # own shutdown would turn a handled KeyboardInterrupt into death by SIGINT (exit -2, not 130).
    os._exit(int(ExitCode.INTERRUPTED))


def _fail(message: str, code: int, as_json: bool) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    if as_json:
        print(json.dumps({"error": message, "exit_code": int(code)}))
    raise typer.Exit(int(code))


def _guarded(fn: Callable[[], Any], *, debug: bool, as_json: bool) -> Any:
    try:
        return fn()
    except KeyboardInterrupt:
        _interrupted(as_json)
    except typer.Exit:
        raise
    except Exception as e:
        if debug:
            traceback.print_exc()
        if interrupts.signalled():   # the interrupt, come out as another exception (interrupts.signalled)
            _interrupted(as_json)
        message, code = _error(e)
        _fail(message, code, as_json)


def _parse_pairs(items: list[str], option: str, convert: Callable[[str], Any]) -> dict[str, Any]:
    result = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            result[name] = convert(value)
        except ValueError:
            raise PackagerError(f"{option} {item!r} is not NAME=VALUE in the right form "
                                f"(e.g. {option} input=1,512); fix the option.", ExitCode.USAGE) from None
    return result


def _dims(text: str) -> tuple[int, ...]:
    dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip() != "")
    if any(d < 0 for d in dims):
        raise ValueError
    return dims


def _error(e: Exception) -> tuple[str, int]:
    """The sentence and exit code for any failure: a PackagerError's own, a full disk's, or a bug's."""
    e = disk_full(e) or e
    if isinstance(e, PackagerError):
        return e.message, int(e.code)
    return f"internal error ({type(e).__name__}: {e}); rerun with --debug and report it.", int(ExitCode.INTERNAL)
