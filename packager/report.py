"""Reports of packaging runs: report.json, report.md (a CI job summary) and report.html.

Input: one summary per target, as `packager package --json` prints it (archive, bundle, target,
recipe, sizes, accuracy, memory, fit, smoke, signature, timings_s; unknown keys are kept and
ignored, missing ones are shown as such). A result with an `error` key (a target that failed)
gets a row that says so.

The HTML page is self-contained (inline CSS and SVG, no script, a Content-Security-Policy that
forbids fetching anything): per target, a chart of the memory estimate's breakdown against the
budget with the measured peak marked, then the accuracy figures, sizes and stage times.

Reports are reproducible: the same results give the same bytes. No wall-clock time is written
unless SOURCE_DATE_EPOCH is set (reproducible-builds.org), and then that time is.

    python -m packager.report SUMMARY.json [...] --out DIR   # summaries saved from `package --json`
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packager.errors import ExitCode, PackagerError
from packager.report_html import html_page
from packager.report_markdown import markdown
from packager.version import __version__

SCHEMA_VERSION = 1
FILES = ("report.json", "report.md", "report.html")




def write_reports(results: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write report.json, report.md and report.html for `results` into `out_dir` (created if
    missing), each atomically (a temporary file, then a rename); return their paths."""
    results = [_jsonable(r) for r in results]
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise PackagerError(f"report: result {i + 1} is a {type(r).__name__}, not a `packager package --json` "
                                "summary (an object).", ExitCode.BAD_INPUT)
    report = build(results)
    texts = {
        "report.json": json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
        "report.md": markdown(report),
        "report.html": html_page(report),
    }
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PackagerError(f"cannot create the report folder {out_dir} ({e.strerror or e}); choose another "
                            "--report folder.", ExitCode.OUTPUT) from None
    return [_write_atomic(out_dir / name, texts[name]) for name in FILES]


def build(results: list[dict[str, Any]]) -> dict[str, Any]:
    """report.json's content."""
    report: dict[str, Any] = {"schema_version": SCHEMA_VERSION,
                              "generated_by": {"tool": "packager", "version": __version__}}
    stamp = _source_date()
    if stamp:
        report["generated_at"] = stamp
    report["results"] = results
    return report


def _write_atomic(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise PackagerError(f"cannot write {path} ({e.strerror or e}); check the folder's permissions and free "
                            "space.", ExitCode.OUTPUT) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _source_date() -> str | None:
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return None
    try:
        return datetime.fromtimestamp(int(value), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        raise PackagerError(f"SOURCE_DATE_EPOCH={value!r} is not a count of seconds since 1970; set it to an "
                            "integer (e.g. `git log -1 --format=%ct`) or unset it.", ExitCode.USAGE) from None


def _jsonable(value: Any) -> Any:
    """A JSON-safe deep copy: paths and other objects as strings, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)



















def _load(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PackagerError(f"{path}: cannot read a JSON summary ({e}); pass files saved from "
                            "`packager package --json`.", ExitCode.BAD_INPUT) from None
    if isinstance(data, dict) and isinstance(data.get("results"), list):  # an earlier report.json
        results: list[dict[str, Any]] = data["results"]
        return results
    return data if isinstance(data, list) else [data]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m packager.report",
                                     description="Write report.json, report.md and report.html from "
                                     "`packager package --json` summaries (or earlier report.json files).")
    parser.add_argument("summaries", nargs="+", type=Path, help="JSON files: one summary, a list, or a report.json")
    parser.add_argument("--out", "-o", type=Path, required=True, help="folder for the reports")
    args = parser.parse_args(argv)
    try:
        results = [r for p in args.summaries for r in _load(p)]
        for path in write_reports(results, args.out):
            print(path)
    except PackagerError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return int(e.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
