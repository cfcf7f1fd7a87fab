"""`packager env`: the exporter environments (packager/exporter_envs.py), made ahead of time or listed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer
from rich.markup import escape

from packager.cli_common import DebugOpt, JsonOpt, VerboseOpt, _guarded, _say, _timing, err

env_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                      help="Exporter environments: one per exporter whose pins conflict with packager's own.")

@env_app.command("create")
@_timing("env create")
def env_create(
    name: str = typer.Argument(..., metavar="NAME", help="The environment (see `packager env list`), e.g. genai."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
    debug: bool = DebugOpt,
) -> None:
    """Make an exporter environment ahead of time (packager makes a missing one when it first needs it)."""
    from packager import exporter_envs

    def go() -> Path:
        env = exporter_envs.lookup(name)
        return exporter_envs.ensure(env, lambda line: _say(verbose, as_json, line))

    folder = _guarded(go, debug=debug, as_json=as_json)
    if as_json:
        print(json.dumps({"name": name, "folder": str(folder), "ready": True}))
        return
    err.print(f"{escape(name)}: ready in {escape(str(folder))}", soft_wrap=True)


@env_app.command("list")
@_timing("env list")
def env_list(as_json: bool = JsonOpt, verbose: bool = VerboseOpt, debug: bool = DebugOpt) -> None:
    """List the exporter environments, their pinned requirements and whether each is made."""
    from packager import exporter_envs

    rows = _guarded(exporter_envs.statuses, debug=debug, as_json=as_json)
    _say(verbose, as_json, f"environments under {exporter_envs.envs_root()} (PACKAGER_CACHE_DIR)")
    if as_json:
        print(json.dumps([dataclasses.asdict(r) for r in rows]))
        return
    for r in rows:
        print(f"{r.name}  {'ready' if r.ready else 'not made (packager env create ' + r.name + ')'}  {r.folder}")
        print(f"    {r.purpose}: {' '.join(r.requirements)}")
