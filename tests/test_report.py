"""Reports (report.json, report.md, report.html) from `packager package --json` summaries, the JSON
Schemas of manifest.json and report.json, and the GitHub Actions workflow in scripts/ci/.

tests/data/package_summaries.json holds real summaries: sample:minilm for rpi5 and
jetson-orin-nano, and a tiny Llama (tests/tiny_decoders.py) for phone with `--smoke host`.
tests/data/manifest_decoder.json is that Llama bundle's manifest.json.
"""

from __future__ import annotations

import copy
import html
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema  # the test extra
import pytest
import yaml  # the test extra

from conftest import REPO, run_cli, unpack
from packager.errors import ExitCode, PackagerError
from packager.report import main as report_main
from packager.report import write_reports

DATA = Path(__file__).parent / "data"
MiB = 2**20
SVG = "{http://www.w3.org/2000/svg}"


def summaries() -> list[dict[str, Any]]:
    return json.loads((DATA / "package_summaries.json").read_text(encoding="utf-8"))


def schema(name: str) -> Any:
    s = json.loads((REPO / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(s)
    return jsonschema.Draft202012Validator(s)


def errors(validator: Any, doc: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def over_budget(result: dict[str, Any], budget: int) -> dict[str, Any]:
    r = copy.deepcopy(result)
    r["memory"] |= {"budget_bytes": budget, "fits": False,
                    "headroom_bytes": budget - r["memory"]["measured_peak_bytes"]}
    return r


def charts(page: str) -> list[ET.Element]:
    return [ET.fromstring(m) for m in re.findall(r"<svg.*?</svg>", page, flags=re.S)]


# ---------------------------------------------------------------- reports

def test_reports_from_real_summaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    results = summaries()
    paths = write_reports(results, tmp_path / "new" / "reports")
    assert [p.name for p in paths] == ["report.json", "report.md", "report.html"]
    assert sorted(p.name for p in (tmp_path / "new" / "reports").iterdir()) == sorted(p.name for p in paths)

    report = json.loads(paths[0].read_text(encoding="utf-8"))
    assert errors(schema("report"), report) == []
    assert report["results"] == results and report["generated_by"]["tool"] == "packager"
    assert "generated_at" not in report  # no clock time unless SOURCE_DATE_EPOCH says which

    md = paths[1].read_text(encoding="utf-8")
    rows = [line for line in md.splitlines() if line.startswith("| ") and "MiB of" in line]
    assert [row.split(" | ")[0] for row in rows] == ["| rpi5", "| jetson-orin-nano", "| phone"]
    assert "✅ fits, 1319 MiB headroom" in rows[0] and "int8-dynamic" in rows[0]
    assert "min cosine 0.99007 (threshold 0.98)" in rows[0]
    assert "tokens 100.0%, logits cosine 0.9903 (thresholds 90%, 0.95)" in rows[2] and "PASS (host)" in rows[2]
    assert "| KV cache (256 tokens) | 64 KiB |" in md  # the decoder's breakdown

    page = paths[2].read_text(encoding="utf-8")
    assert "default-src 'none'" in page and "<script" not in page.lower()
    assert not re.search(r"(src|href)=\"(?!#)", page)  # nothing fetched, only in-page links
    assert len(charts(page)) == 3  # well-formed SVG, one per target

    again = write_reports(results, tmp_path / "again")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]  # reproducible


def test_chart_shows_the_breakdown_against_the_budget(tmp_path: Path) -> None:
    fits, over = summaries()[0], over_budget(summaries()[1], 160 * MiB)
    page = write_reports([fits, over], tmp_path)[2].read_text(encoding="utf-8")
    for svg, r in zip(charts(page), (fits, over)):
        texts = ["".join(t.itertext()) for t in svg.iter(f"{SVG}text")]
        title = svg.find(f"{SVG}title")
        assert title is not None and r["target"] in (title.text or "")
        mem = r["memory"]
        peak, budget = mem["measured_peak_bytes"], mem["budget_bytes"]
        margin = abs(budget - peak) / MiB
        words = f"{margin:.1f} MiB over budget" if margin < 100 else f"{margin:.0f} MiB headroom"
        assert any(words in t for t in texts), texts
        assert any(t.startswith("budget ") for t in texts) and any(t.startswith("measured peak ") for t in texts)
        # each nonzero component of the peak phase is a bar segment (twice: gauge and composition)
        segments = [t.text for t in svg.iter(f"{SVG}title") if t.text and ": " in t.text and t is not title]
        in_peak = [k for k, b in mem["estimate"]["breakdown"].items() if b > 0 and k not in ("activations", "kv_cache")]
        assert len(segments) == 2 * len(in_peak)
        assert any("weights: " in s for s in segments) and not any(s.startswith("activations") for s in segments)
        assert any("Not in the bars (run phase only" in t for t in texts)  # and why not
    first, second = charts(page)
    assert "Fits" in "".join(first.itertext()) and "Does not fit" in "".join(second.itertext())


def test_mapped_tables_are_shown_beside_the_resident_peak(tmp_path: Path) -> None:
    """An E-class model's mapped table (estimate.mapped_bytes) is named apart from the peak in both reports."""
    result = copy.deepcopy(summaries()[0])
    result["memory"]["estimate"]["mapped_bytes"] = 2240 * MiB
    markdown, page = (p.read_text(encoding="utf-8") for p in write_reports([result], tmp_path)[1:])
    assert "2240 MiB of lookup tables mapped from storage, not resident" in markdown
    assert "+ 2240 MiB mapped" in markdown and "mapped from storage" in page
    plain = write_reports(summaries()[:1], tmp_path / "plain")[1].read_text(encoding="utf-8")
    assert "mapped" not in plain


def test_encoders_loaded_on_demand_are_shown_with_each_modes_peak(tmp_path: Path) -> None:
    """A multimodal decoder's encoders (memory.on_demand) are named apart from the resident peak with their mode's
    peak: measured where it was, the estimate's high side otherwise."""
    result = copy.deepcopy(summaries()[0])
    result["memory"]["on_demand"] = {"image": {"file": "model/encoders/vision.onnx", "size_bytes": 154 * MiB},
                                     "audio": {"file": "model/encoders/audio.onnx", "size_bytes": 300 * MiB}}
    result["memory"]["modes"] = {"image": {"peak_bytes": 974 * MiB}}
    result["memory"]["estimate"]["modes"] = {"audio": {"low_bytes": 872 * MiB, "high_bytes": 1404 * MiB}}
    markdown, page = (p.read_text(encoding="utf-8") for p in write_reports([result], tmp_path)[1:])
    said = ("loaded on demand, the image encoder 154 MiB (its mode's peak 974 MiB) and the audio encoder 300 MiB "
            "(its mode's estimated peak 1404 MiB)")
    assert said in markdown and said in html.unescape(page)
    assert "on demand" not in write_reports(summaries()[:1], tmp_path / "plain")[1].read_text(encoding="utf-8")


def test_any_text_is_escaped(tmp_path: Path) -> None:
    r = summaries()[0]
    r["bundle"] = 'evil <script>alert(1)</script> | **b** [x](http://e.test) `c` $m$ :+1: @u\nnext\x00'
    r["target"] = "board</svg><b>"
    r["memory"]["estimate"]["notes"] = ["<img src=x onerror=alert(1)>"]
    r["timings_s"]["<stage>"] = 1.0
    md, page = (p.read_text(encoding="utf-8") for p in write_reports([r], tmp_path)[1:])
    assert "<script" not in page and "<img" not in page and "</svg><b>" not in page and "\x00" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert len(charts(page)) == 1
    row = next(line for line in md.splitlines() if line.startswith("| board"))
    assert len(re.findall(r"(?<!\\)\|", row)) == 9  # 8 cells: no pipe in the text splits one
    assert "<script>" not in md and "\\<script\\>" in md and "\\*\\*b\\*\\*" in md and "\\[x\\]" in md
    assert "\\`c\\`" in md and "\\$m\\$" in md and "\\@u" in md and "\n next" not in md


def test_failures_and_unknown_keys(tmp_path: Path) -> None:
    ok = summaries()[2] | {"cache": {"hits": ["export"], "dir": "/tmp/cache"}}
    ok["memory"]["estimate"]["breakdown"]["gpu_workspace"] = 4 * MiB
    failed = {"target": "rpi4", "error": "does not fit: measured peak 1700 MiB is over rpi4's budget", "exit_code": 3}
    paths = write_reports([ok, failed], tmp_path)
    report = json.loads(paths[0].read_text(encoding="utf-8"))
    assert errors(schema("report"), report) == []
    md, page = (p.read_text(encoding="utf-8") for p in paths[1:])
    assert "❌ error (exit 3)\\: does not fit\\: measured peak 1700 MiB" in md
    assert "gpu workspace" in page and len(charts(page)) == 1
    assert errors(schema("report"), {**report, "results": [{"target": "x"}]})  # neither a summary nor a failure


def test_source_date_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    paths = write_reports(summaries()[:1], tmp_path)
    assert json.loads(paths[0].read_text(encoding="utf-8"))["generated_at"] == "2023-11-14T22:13:20Z"
    assert "2023-11-14T22:13:20Z" in paths[1].read_text(encoding="utf-8")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(PackagerError) as e:
        write_reports([], tmp_path / "bad")
    assert e.value.code == ExitCode.USAGE and not (tmp_path / "bad").exists()


def test_writes_atomically_and_says_why_it_cannot(tmp_path: Path) -> None:
    (tmp_path / "report.md").write_text("old", encoding="utf-8")
    write_reports(summaries(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json", "report.md"]  # no temp files
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    with pytest.raises(PackagerError) as e:
        write_reports(summaries(), blocker / "reports")
    assert e.value.code == ExitCode.OUTPUT and "report folder" in e.value.message


def test_module_command_merges_saved_summaries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one, rest = tmp_path / "one.json", tmp_path / "rest.json"
    one.write_text(json.dumps(summaries()[0]), encoding="utf-8")
    rest.write_text(json.dumps(summaries()[1:]), encoding="utf-8")
    assert report_main([str(one), str(rest), "--out", str(tmp_path / "a")]) == 0
    assert report_main([str(tmp_path / "a" / "report.json"), "--out", str(tmp_path / "b")]) == 0  # a report.json too
    assert (tmp_path / "a" / "report.md").read_bytes() == (tmp_path / "b" / "report.md").read_bytes()
    assert capsys.readouterr().out.split() == [str(tmp_path / d / f) for d in "ab"
                                               for f in ("report.json", "report.md", "report.html")]
    assert report_main([str(tmp_path / "missing.json"), "--out", str(tmp_path / "c")]) == ExitCode.BAD_INPUT


# ---------------------------------------------------------------- schemas

def test_schemas_share_their_common_definitions() -> None:
    manifest, report = (json.loads((REPO / "schemas" / f"{n}.schema.json").read_text(encoding="utf-8"))
                        for n in ("manifest", "report"))
    for name in ("bytes", "memory", "accuracy", "fit_auto", "signature", "coverage"):
        assert manifest["$defs"][name] == report["$defs"][name], name


def test_manifest_schema_holds_a_decoder_manifest() -> None:
    validator = schema("manifest")
    manifest = json.loads((DATA / "manifest_decoder.json").read_text(encoding="utf-8"))
    assert manifest["runtime"]["io"]["kind"] == "decoder"
    assert errors(validator, manifest) == []
    broken = copy.deepcopy(manifest)
    del broken["runtime"]["context"]  # a decoder needs its KV cache length
    broken["files"][0]["sha256"] = "not-a-hash"
    broken["surprise"] = 1
    found = "\n".join(errors(validator, broken))
    assert "'context' is a required property" in found and "not-a-hash" in found and "surprise" in found


@pytest.mark.integration
def test_manifest_schema_holds_a_fresh_bundle(silero_onnx: Path, tmp_path: Path) -> None:
    proc = run_cli("package", str(silero_onnx), "--target", "rpi5", "--out", str(tmp_path / "dist"), "--shape",
                   "input=1,512", "--shape", "state=2,1,128", "--value", "sr=16000", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    folder = unpack(Path(summary["archive"]), tmp_path / "x")
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["runtime"]["io"]["kind"] == "tensor"
    assert errors(schema("manifest"), manifest) == []
    report = json.loads(write_reports([summary], tmp_path / "report")[0].read_text(encoding="utf-8"))
    assert errors(schema("report"), report) == []


# ---------------------------------------------------------------- the GitHub Actions workflow

def test_workflow_packages_every_target() -> None:
    from typer.testing import CliRunner

    from packager.cli import app

    wf = yaml.safe_load((REPO / "scripts" / "ci" / "packager.yml").read_text(encoding="utf-8"))
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads the key `on` as true
    assert {"push", "pull_request"} <= set(on)
    assert wf["env"]["PACKAGER_CACHE_DIR"]
    jobs = wf["jobs"]
    for job in jobs.values():
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), step

    targets = jobs["targets"]
    (listing,) = [s for s in targets["steps"] if "packager targets --json" in s.get("run", "")]
    assert targets["outputs"]["matrix"] == f"${{{{ steps.{listing['id']}.outputs.matrix }}}}"
    assert ">> \"$GITHUB_OUTPUT\"" in listing["run"]

    package = jobs["package"]
    assert package["needs"] == "targets" and package["strategy"]["fail-fast"] is False
    assert package["strategy"]["matrix"]["include"] == "${{ fromJSON(needs.targets.outputs.matrix) }}"
    # every matrix field the job reads is one `packager targets --json` prints
    rows = json.loads(CliRunner().invoke(app, ["targets", "--json"]).stdout)
    used = set(re.findall(r"matrix\.(\w+)", json.dumps(package)))
    assert used and all(used <= set(row) for row in rows), used
    assert {r["name"] for r in rows if r["arch"] == "aarch64" and r["debian"]} >= {"rpi4", "rpi5"}

    steps = package["steps"]
    uses = {s["uses"].split("@")[0]: s for s in steps if "uses" in s}
    cache = uses["actions/cache"]["with"]
    assert cache["path"] == "${{ env.PACKAGER_CACHE_DIR }}"
    assert "hashFiles(env.MODEL_FILES)" in cache["key"] and "matrix.name" in cache["key"]
    assert cache["restore-keys"].strip() + "${{ matrix.name }}" == cache["key"]
    upload = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    assert any("dist/*.tar.gz" in s["with"]["path"] for s in upload)
    runs = "\n".join(s.get("run", "") for s in steps)
    order = [runs.index(c) for c in ("packager package", "packager smoke", "python -m packager.report",
                                     '>> "$GITHUB_STEP_SUMMARY"')]
    assert order == sorted(order)
    assert "--emulate" in runs and "emulate" in package["env"]["SMOKE"] and "matrix.debian" in package["env"]["SMOKE"]
    assert uses["actions/cache"] is steps[[s.get("uses", "").startswith("actions/cache") for s in steps].index(True)]
    assert steps.index(uses["actions/cache"]) < next(i for i, s in enumerate(steps)
                                                     if "packager package" in s.get("run", ""))

    report = jobs["report"]
    assert set(report["needs"]) == {"targets", "package"} and "always()" in report["if"]
    assert any("GITHUB_STEP_SUMMARY" in s.get("run", "") for s in report["steps"])
