"""The CLI speaks one language (issue 18, item 7): the same options mean the same things in every
command, as a new user reads and types them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import run_cli
from packager.cli import app
from packager.config import parse_context
from packager.errors import ExitCode, PackagerError
from packager.labels import human_count, memory_label, provider_name
from packager.samples import SAMPLES

LLAMA_1B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
            "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 128256, "max_position_embeddings": 131072, "tie_word_embeddings": True, "head_dim": 64}
COMMANDS = ("targets", "package", "check", "plan", "smoke", "keygen", "inspect")


@pytest.fixture()
def llama_1b(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_1B))
    return tmp_path


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def one_sentence_usage_error(code: int, stderr: str) -> None:
    """A bad input: exit 2 (ExitCode.USAGE), one `error:` line, never a traceback."""
    assert code == ExitCode.USAGE, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr


# 1. -t/--target repeatable in check and plan: one result per target, as package does.

def _tiny_budget_profile(tmp_path: Path) -> Path:
    from packager.paths import profiles_dir

    broken = tmp_path / "tiny.toml"  # a budget below the runtime's own: that target fails, before any work
    broken.write_text((profiles_dir() / "rpi5.toml").read_text().replace("memory_bytes = 1500000000",
                                                                         "memory_bytes = 1000000", 1))
    return broken


def test_check_takes_several_targets_one_result_each(tmp_path: Path) -> None:
    code, out, _ = invoke("check", "sample:silero-vad", "-t", "rpi5", "-t", str(_tiny_budget_profile(tmp_path)),
                          "-t", "rpi4", "--no-measure", "--json")
    doc = json.loads(out)
    assert code == doc["exit_code"] == ExitCode.BAD_PROFILE  # the first failing target's
    ok, failed, ok4 = doc["results"]
    assert (ok["target"], ok["fits"], ok["exit_code"]) == ("rpi5", True, 0)
    assert failed["exit_code"] == ExitCode.BAD_PROFILE and "smaller than the runtime" in failed["error"]
    assert (ok4["target"], ok4["exit_code"]) == ("rpi4", 0)
    code, _, stderr = invoke("check", "sample:silero-vad", "-t", "rpi5", "-t", "rpi4", "--no-measure")
    assert code == 0 and "-- rpi5" in stderr and "-- rpi4" in stderr
    assert re.search(r"rpi4 .* fits", stderr)  # the summary table, one row per target


def test_plan_takes_several_targets_and_all_targets(llama_1b: Path) -> None:
    code, out, _ = invoke("plan", str(llama_1b), "-t", "rpi5", "-t", "jetson", "--context", "2K", "--json")
    doc = json.loads(out)
    assert code == doc["exit_code"] == 0
    assert [r["target"] for r in doc["results"]] == ["rpi5", "jetson-orin-nano"]
    assert all(r["exit_code"] == 0 and r["parameters"] == 1_235_814_400 for r in doc["results"])
    code, out, _ = invoke("plan", str(llama_1b), "--all-targets", "--context", "2K", "--json")
    from packager.profiles import builtin_profiles

    assert [r["target"] for r in json.loads(out)["results"]] == list(builtin_profiles())
    code, _, stderr = invoke("plan", str(llama_1b), "--all-targets", "-t", "rpi5")
    one_sentence_usage_error(code, stderr)


# 2. --context takes 8K, 4k, 512, 16K everywhere, through one parser.

@pytest.mark.parametrize(("text", "tokens"), [("8K", 8192), ("4k", 4096), ("512", 512), ("16K", 16384),
                                               (" 8K ", 8192), ("1M", 2**20), (2048, 2048)])
def test_context_forms(text: str | int, tokens: int) -> None:
    assert parse_context(text) == tokens


@pytest.mark.parametrize("text", ["8x", "0", "-1", "1.5K", "", "K", "8 K B", "99999999999"])
def test_bad_context_is_a_usage_error(text: str) -> None:
    with pytest.raises(PackagerError) as e:
        parse_context(text)
    assert e.value.code == ExitCode.USAGE and "--context" in e.value.message


@pytest.mark.parametrize("command", [("package", "sample:silero-vad", "-t", "rpi5"),
                                     ("check", "sample:silero-vad", "-t", "rpi5"),
                                     ("plan", "sample:tiny-llama", "-t", "rpi5")])
def test_every_context_option_refuses_the_same_way(command: tuple[str, ...], tmp_path: Path) -> None:
    out = ["--out", str(tmp_path)] if command[0] == "package" else []
    code, _, stderr = invoke(*command, "--context", "8x", *out)
    one_sentence_usage_error(code, stderr)
    assert "--context '8x' is not a number of tokens; write it like 8192, 8K or 512." in stderr


def test_plan_context_in_thousands(llama_1b: Path) -> None:
    code, out, _ = invoke("plan", str(llama_1b), "-t", "rpi5", "--context", "16K", "--context", "4k",
                          "--context", "512", "--json")
    assert code == 0 and [r["context"] for r in json.loads(out)["rows"]][:3] == [16384, 4096, 512]


def test_check_context_reaches_the_decoder_as_tokens() -> None:
    """1K is 1024 tokens: more than tiny-llama's 512 positions, so the export refuses it by that number."""
    code, _, stderr = invoke("check", "sample:tiny-llama", "-t", "rpi5", "--context", "1K", "--no-measure")
    assert code == ExitCode.USAGE and "--context 1024 is longer than the model's 512 positions" in stderr


# 3. -v/--verbose on every command.

@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_verbose(command: str) -> None:
    code, out, _ = invoke(command, "--help")
    assert code == 0 and "-v, --verbose" in out


def test_verbose_says_where_settings_came_from_and_the_time(llama_1b: Path) -> None:
    code, _, stderr = invoke("plan", str(llama_1b), "-t", "rpi5", "--context", "2K", "-v")
    assert code == 0
    assert "target  = rpi5  (--target)" in stderr and "budget  = 1500000000  (profile rpi5)" in stderr
    assert f"config  = {llama_1b / 'config.json'}" in stderr and re.search(r"plan took \d+\.\ds", stderr)
    code, _, stderr = invoke("targets", "-v")
    assert code == 0 and "profiles from " in stderr and "targets took" in stderr
    code, out, stderr = invoke("plan", str(llama_1b), "-t", "rpi5", "-v", "--json")
    assert code == 0 and json.loads(out) and "took" not in stderr  # --json: stdout only, nothing said


# 4. plan reads sample:NAME and Hugging Face folders as well as config files.

def test_plan_reads_a_sample_and_a_hugging_face_folder(minilm_dir: Path) -> None:
    code, out, _ = invoke("plan", "sample:tiny-llama", "-t", "rpi5", "--json")
    assert code == 0 and json.loads(out)["architecture"]["name"] == "LlamaForCausalLM"
    code, out, _ = invoke("plan", str(minilm_dir), "-t", "rpi5", "--json")
    assert code == 0 and json.loads(out)["parameters"] == 22_713_216
    code, _, stderr = invoke("plan", "sample:silero-vad", "-t", "rpi5")
    assert code == ExitCode.BAD_INPUT and "`packager check sample:silero-vad`" in stderr
    code, _, stderr = invoke("plan", "sample:nosuch", "-t", "rpi5")
    assert code == ExitCode.BAD_INPUT and "unknown sample 'nosuch'" in stderr


# 5. check takes a bundle, as inspect and smoke do.

def test_check_judges_a_bundle_as_packaged(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    code, _, stderr = invoke("package", "sample:silero-vad", "-t", "rpi5", "--out", str(out))
    assert code == 0, stderr
    archive = out / "silero-vad-rpi5.tar.gz"
    code, stdout, stderr = invoke("check", str(archive), "--json")   # on the target it was built for
    r = json.loads(stdout)
    assert code == 0, stderr
    assert (r["target"], r["recipe"], r["fits"]) == ("rpi5", "int8-dynamic, as bundled", True)
    assert r["measured"]["peak_bytes"] > 0   # it ran on its own sample inputs (Silero's sr=16000)
    code, stdout, _ = invoke("check", str(archive), "-t", "rpi4", "--budget", "70MiB", "--no-measure", "--json")
    assert code == ExitCode.DOES_NOT_FIT and json.loads(stdout)["target"] == "rpi4"
    code, _, stderr = invoke("check", str(archive), "--recipe", "int4")
    one_sentence_usage_error(code, stderr)
    assert "quantized already; drop --recipe" in stderr
    code, _, stderr = invoke("check", str(archive), "--kv-bits", "16")
    one_sentence_usage_error(code, stderr)
    assert "whose KV cache was built with it; drop --kv-bits" in stderr


# 6. Help: no Python type labels, brackets kept, defaults shown.

@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_values_not_python_types(command: str) -> None:
    code, out, _ = invoke(command, "--help")
    assert code == 0
    assert not re.search(r"<(list|str|bool|int|float|path)\b|\bTEXT\b|\bINTEGER\b", out), out


def test_help_keeps_brackets_and_shows_defaults() -> None:
    _, out, _ = invoke("package", "--help")
    text = " ".join(out.split())
    assert "[tool.packager] in the nearest pyproject.toml" in text and "[default: dist]" in text
    assert "--context TOKENS" in text and "[default: the profile's]" in text
    _, out, _ = invoke("inspect", "--help")
    assert "[default: 15" in " ".join(out.split())


# 7. package --help lists every built-in sample, from the registry.

def test_package_help_lists_every_sample() -> None:
    _, out, _ = invoke("package", "--help")
    text = re.sub(r"-\s+", "-", " ".join(out.split()))   # help wraps at hyphens
    for name in SAMPLES:
        assert f"sample:{name}" in text


# 8. plan's header: "1.2B parameters", no dangling separator.

def test_plan_header(llama_1b: Path) -> None:
    proc = run_cli("plan", str(llama_1b), "-t", "jetson", env={"COLUMNS": "60"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "LlamaForCausalLM: 1.2B parameters (1,235,814,400), 16 layers, 8 KV heads x 64"
    assert lines[1] == "target jetson-orin-nano, budget 2861 MiB"
    assert not any(line.rstrip().endswith((";", ",")) for line in lines)


@pytest.mark.parametrize(("count", "text"), [(1_235_814_400, "1.2B"), (22_713_216, "22.7M"), (124_000_000, "124M"),
                                              (2_000_000_000, "2B"), (999, "999")])
def test_human_count(count: int, text: str) -> None:
    assert human_count(count) == text


# 9. Providers as ONNX Runtime spells them.

def test_targets_name_providers_as_onnx_runtime_does() -> None:
    proc = run_cli("targets")
    assert proc.returncode == 0
    assert "TensorRT > CUDA > CPU" in proc.stdout and "XNNPACK > CPU" in proc.stdout
    assert "Tensorrt" not in proc.stdout and "Xnnpack" not in proc.stdout
    assert [provider_name(p) for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                       "XnnpackExecutionProvider", "CPUExecutionProvider")] == \
        ["TensorRT", "CUDA", "XNNPACK", "CPU"]


# 10. The memory breakdown in words a user knows; JSON keeps its keys.
# 11. No stage line for a stage the target does not have.

def test_check_table_in_plain_words_and_only_the_targets_stages() -> None:
    proc = run_cli("check", "sample:silero-vad", "-t", "rpi5", "--no-measure")
    assert proc.returncode == 0, proc.stderr
    for label in ("weights", "KV cache", "runtime's working memory (activations)", "runtime itself"):
        assert label in proc.stderr
    for key in ("runtime_base", "kv_cache", "weights_inline", "prepacked", "allocator_overhead"):
        assert key not in proc.stderr
    assert "mobile" not in proc.stderr and "fit" in proc.stderr
    proc = run_cli("check", "sample:silero-vad", "-t", "phone", "--no-measure", "--json")
    r = json.loads(proc.stdout)
    assert {"runtime_base", "kv_cache", "ort_format_buffer"} <= set(r["estimate"]["breakdown"])  # JSON unchanged
    assert "mobile" in r["timings_s"]
    assert memory_label("kv_cache") == "KV cache" and memory_label("something_new") == "something new"
