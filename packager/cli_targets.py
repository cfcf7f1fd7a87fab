"""`package`, `check` and `plan` for several targets (-t A -t B, --all-targets): the names, checked before any work;
one stage cache that the targets share; one result row per target, going on after a failure; the exit code and
the summary at the end; and the --report files.
"""

from __future__ import annotations

import contextlib
import json
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.markup import escape

from packager import interrupts
from packager.cli_common import _error, err
from packager.errors import ExitCode, PackagerError
from packager.leftovers import temp_folder


@contextlib.contextmanager
def _shared_cache(no_cache: bool) -> Iterator[bool | Path]:
    """The stage cache for several targets: the user's, or with --no-cache one for this run only, so
    that the targets still share one export."""
    with temp_folder("cache") as tmp:
        yield Path(tmp) if no_cache or _cache_off() else True


def _each_target(targets: list[str], run: Callable[[str], Any], show: Callable[[Any], None], reporter: Any,
                 rows: list[dict[str, Any]], *, debug: bool) -> None:
    """`run` for each target in turn, going on after a failure; one result row per target in `rows` (the
    result's to_dict() and its exit_code, or the target, the error and its exit code)."""
    for t in targets:
        reporter.print(f"-- {t}")
        try:
            result = run(t)
        except Exception as e:
            if debug:
                traceback.print_exc()
            if interrupts.signalled():   # the interrupt, come out as another exception (interrupts.signalled)
                raise KeyboardInterrupt from e
            message, code = _error(e)
            err.print(f"[red]error:[/] {escape(t)}: {escape(message)}", soft_wrap=True)
            rows.append({"target": t, "error": message, "exit_code": code})
            continue
        if not reporter.quiet:
            show(result)
        rows.append(result.to_dict() | {"exit_code": result.exit_code})


def _exit_several(rows: list[dict[str, Any]], as_json: bool,
                  summary: Callable[[list[dict[str, Any]]], None] | None) -> NoReturn:
    """The end of a run over several targets: {"results": rows, "exit_code": N} with --json, else the
    summary table; the exit code is the first failing target's (0 when none failed)."""
    code = next((r["exit_code"] for r in rows if r["exit_code"]), 0)
    if as_json:
        print(json.dumps({"results": rows, "exit_code": code}))
    elif summary is not None:
        summary(rows)
    raise typer.Exit(code)


def _write_report(folder: Path, rows: list[dict[str, Any]], reporter: Any) -> None:
    from packager.report import write_reports

    paths = write_reports(rows, folder)
    reporter.print(f"report    {', '.join(str(p) for p in paths)}")


def _cache_off() -> bool:
    from packager.cache import cache_disabled_by_env

    return cache_disabled_by_env()


def _several_targets(target: list[str], all_targets: bool) -> list[str] | None:
    """The profile names to run for when there are several (in order, each once), else None."""
    from packager.profiles import builtin_profiles, resolve_target

    if all_targets and target:
        raise PackagerError("--all-targets runs for every built-in target; drop --target or --all-targets.",
                            ExitCode.USAGE)
    if all_targets:
        return list(builtin_profiles())
    if len(target) <= 1:
        return None
    names: dict[str, str] = {}
    for t in target:  # every name checked before minutes of work
        profile = resolve_target(t)
        names.setdefault(t if t.endswith(".toml") else profile.name, t)
    return [t if t.endswith(".toml") else n for n, t in names.items()]
