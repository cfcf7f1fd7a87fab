"""Property-based tests (hypothesis) for the code that reads what users and strangers hand it:
profiles, sizes, manifests, archives and signatures. Whatever the input, the only failures are the
documented ones: PackagerError with its exit code on the host; on the device, the smoke test's
`FAIL: <reason>` verdict (and ValueError, one sentence, from run.py's readers)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gzip
import importlib.util
import io
import json
import math
import os
import re
import stat
import tarfile
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import run_cli, unpack
from packager.archive import extract_bundle, write_archive
from packager.config import parse_size
from packager.device_code import runner
from packager.errors import ExitCode, PackagerError
from packager.paths import profiles_dir, targets_dir
from packager.profiles import load_profile

# Fast by default (the file runs in well under 30 s); PACKAGER_PROPERTY_EXAMPLES=2000 searches deeper.
EXAMPLES = int(os.environ.get("PACKAGER_PROPERTY_EXAMPLES", "60"))
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RPI5 = profiles_dir() / "rpi5.toml"
INT64 = (-2**63, 2**63 - 1)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example (hypothesis reruns a test body many times; tmp_path is one folder)."""
    with tempfile.TemporaryDirectory(prefix="props-") as tmp:
        yield Path(tmp)


def assert_one_sentence(e: PackagerError, *codes: ExitCode) -> None:
    assert e.code in codes, (e.code, e.message)
    assert e.message and "\n" not in e.message and "Traceback" not in e.message


# ---------------------------------------------------------------- sizes

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
size_text = st.from_regex(r"\s*[0-9]{0,30}\.?[0-9]{1,30}\s*([kKmMgG][iI]?[bB]|[bB])?\s*", fullmatch=True)


@FAST
@given(st.one_of(size_text, st.text(), st.integers(), st.booleans(), st.sampled_from(["9" * 400, "0.0000001GB", "-1",
                                                                                       "1e9", "½GB", "١٢MB", "nan"])))
def test_parse_size_gives_positive_bytes_or_a_usage_error(value: Any) -> None:
    try:
        size = parse_size(value, "--budget")
    except PackagerError as e:
        assert_one_sentence(e, ExitCode.USAGE)
        return
    assert isinstance(size, int) and not isinstance(size, bool) and 0 < size <= INT64[1]
    size / 2**20  # what every report does with it: must not overflow a float


@FAST
@given(st.integers(1, 10**9), st.sampled_from(sorted(UNITS)), st.sampled_from(["", " "]))
def test_parse_size_is_exact(n: int, unit: str, space: str) -> None:
    assert parse_size(f"{n}{space}{unit.upper() if n % 2 else unit}", "--budget") == n * UNITS[unit]
    assert parse_size(f"{n}.5{unit}", "--budget") == n * UNITS[unit] + UNITS[unit] // 2


# ---------------------------------------------------------------- profiles


def toml_value(value: Any) -> str:
    """A value as TOML (inline tables for nested dicts: enough to write any profile variant)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_value(key)


def to_toml(data: dict[str, Any]) -> str:
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in data.items())


toml_scalars = st.one_of(
    st.integers(-5, 2**33), st.sampled_from([0, -1, 2**63 - 1, -2**63, 2**64, 10**400]),
    st.floats(allow_nan=True), st.booleans(), st.text(max_size=20),
    st.sampled_from(["all", "disable", "parallel", "int8-dynamic", "fp16", "CPUExecutionProvider", "trixie", "3.13"]),
    st.dates(), st.datetimes(timezones=st.just(datetime.UTC)),
)
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3)), max_leaves=6)


def paths_of(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a nested dict (list items included), for picking what to mutate."""
    found = [prefix] if prefix else []
    if isinstance(data, dict):
        for k, v in data.items():
            found += paths_of(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found += paths_of(v, (*prefix, i))
    return found


def mutate(data: Any, draw: Any, values: Any) -> Any:
    """One change at a random key path: delete it, replace its value, rename it or add a sibling."""
    paths = paths_of(data)
    path = draw(st.sampled_from(paths))
    parent = data
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    action = draw(st.sampled_from(["delete", "replace", "rename", "add"]))
    if action == "delete":
        del parent[last]
    elif action == "replace":
        parent[last] = draw(values)
    elif isinstance(parent, dict) and action == "rename":
        parent[draw(st.text(min_size=1, max_size=12))] = parent.pop(last)
    elif isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=12))] = draw(values)
    return data


@st.composite
def profile_variants(draw: Any) -> str:
    data = tomllib.loads(RPI5.read_text(encoding="utf-8"))
    for _ in range(draw(st.integers(1, 3))):
        data = mutate(data, draw, toml_values)
    return to_toml(data)


def check_loaded(path: Path) -> None:
    try:
        profile = load_profile(path)
    except PackagerError as e:
        assert_one_sentence(e, ExitCode.BAD_PROFILE)
        assert str(path) in e.message
        return
    # What the rest of packager does with a profile it accepted must work too.
    json.dumps(profile.to_dict())
    for size in (profile.device.ram_bytes, profile.budget.memory_bytes):
        assert INT64[0] <= size <= INT64[1]
        size / 2**30


def test_the_toml_writer_round_trips_the_real_profile(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(to_toml(tomllib.loads(RPI5.read_text(encoding="utf-8"))), encoding="utf-8")
    assert load_profile(tmp_path / "p.toml") == dataclasses.replace(load_profile(RPI5), source=str(tmp_path / "p.toml"))


@FAST
@given(profile_variants())
def test_profile_variants_load_or_fail_as_bad_profile(text: str) -> None:
    with scratch() as tmp:
        (tmp / "variant.toml").write_text(text, encoding="utf-8")
        check_loaded(tmp / "variant.toml")


def _numbers(data: dict[str, Any]) -> list[tuple]:
    """The key paths of every number in a profile."""
    return [path for path in paths_of(data) if type(_at(data, path)) in (int, float)]


def _at(data: Any, path: tuple) -> Any:
    for k in path:
        data = data[k]
    return data


@FAST
@given(st.data(), st.one_of(st.integers(), st.sampled_from([2**63 - 1, 2**63, -2**63 - 1, 10**400]), st.floats()))
def test_any_number_in_a_profile_loads_or_fails_as_bad_profile(data: st.DataObject, number: int | float) -> None:
    profile = tomllib.loads(RPI5.read_text(encoding="utf-8"))
    path = data.draw(st.sampled_from(_numbers(profile)))
    _at(profile, path[:-1])[path[-1]] = number
    with scratch() as tmp:
        (tmp / "numbers.toml").write_text(to_toml(profile), encoding="utf-8")
        check_loaded(tmp / "numbers.toml")


@FAST
@given(st.integers(0, len(RPI5.read_bytes())), st.integers(0, 40),
       st.one_of(st.binary(max_size=40), st.just(b"\nextra = " + b"7" * 5000 + b"\n")))  # past Python's digit limit
def test_damaged_profile_files_fail_as_bad_profile(at: int, cut: int, insert: bytes) -> None:
    raw = RPI5.read_bytes()
    with scratch() as tmp:
        (tmp / "damaged.toml").write_bytes(raw[:at] + insert + raw[at + cut:])
        check_loaded(tmp / "damaged.toml")


# ---------------------------------------------------------------- archives

component = st.text(st.sampled_from("abcXYZ019-_. éü漢"), min_size=1, max_size=12).filter(
    lambda s: s not in (".", ".."))
long_component = st.text(st.sampled_from("abcdefgh"), min_size=100, max_size=200)
relpaths = st.lists(st.one_of(component, long_component), min_size=1, max_size=3).map(lambda parts: "/".join(parts))
trees = st.dictionaries(relpaths, st.tuples(st.binary(max_size=64), st.booleans()), min_size=0, max_size=8)


def drop_conflicts(tree: dict[str, tuple[bytes, bool]]) -> dict[str, tuple[bytes, bool]]:
    """A path cannot be both a file and a folder: keep files that are no other file's folder."""
    dirs = {"/".join(p.split("/")[:i]) for p in tree for i in range(1, p.count("/") + 1)}
    return {p: v for p, v in tree.items() if p not in dirs}


def listing(folder: Path) -> dict[str, tuple[bytes, bool] | None]:
    return {p.relative_to(folder).as_posix():
            (p.read_bytes(), bool(p.stat().st_mode & stat.S_IXUSR)) if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


@FAST
@given(trees, st.sampled_from(["b-rpi5", "minilm-rpi5", "a b", "ü"]))
def test_archives_round_trip_deterministically(tree: dict[str, tuple[bytes, bool]], name: str) -> None:
    tree = drop_conflicts(tree)
    with scratch() as tmp:
        folder = tmp / "src" / name
        folder.mkdir(parents=True)
        for rel, (data, executable) in tree.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
            (folder / rel).chmod(0o755 if executable else 0o644)
        write_archive(folder, tmp / "a.tar.gz")
        write_archive(folder, tmp / "b.tar.gz")
        assert (tmp / "a.tar.gz").read_bytes() == (tmp / "b.tar.gz").read_bytes()
        (tmp / "out").mkdir()
        top = extract_bundle(tmp / "a.tar.gz", tmp / "out")
        assert top == tmp / "out" / name
        assert listing(top) == listing(folder)


HOSTILE_NAMES = ["..", "../x", "b/../../x", "b/../x", "/abs", "/", ".", "./b/x", "b/./x", "b//x", "b/", "", "b/c/..",
                 "a\\..\\b", "b/" + "n" * 300, "b/line\nbreak", "x", "b/x", "b/y/z", "c/x"]
KINDS = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE,
         tarfile.FIFOTYPE, tarfile.CONTTYPE]
members = st.tuples(st.one_of(st.sampled_from(HOSTILE_NAMES), relpaths.map(lambda p: "b/" + p)), st.sampled_from(KINDS),
                    st.sampled_from(["/etc/passwd", "../../x", "b/x", "x", "", "b"]), st.binary(max_size=16),
                    st.sampled_from([0o644, 0o755, 0o4755, 0o000, 0o777]))


def hand_made_tar(entries: list[tuple[str, bytes, str, bytes, int]], compress: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, link, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = kind, link, mode
            info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.CONTTYPE) else 0
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return buffer.getvalue()


def check_extract(raw: bytes) -> None:
    """extract_bundle on `raw` either fails with BAD_INPUT or returns a folder inside dest; either way
    nothing appears outside dest and nothing inside it is a link."""
    with scratch() as tmp:
        (tmp / "outside").mkdir()
        (tmp / "archive.tar.gz").write_bytes(raw)
        dest = tmp / "sandbox" / "dest"
        dest.mkdir(parents=True)
        try:
            top = extract_bundle(tmp / "archive.tar.gz", dest)
        except PackagerError as e:
            assert_one_sentence(e, ExitCode.BAD_INPUT)
        else:
            assert top.is_dir() and not top.is_symlink() and dest.resolve() in top.resolve().parents
        assert sorted(p.name for p in tmp.iterdir()) == ["archive.tar.gz", "outside", "sandbox"]
        assert list((tmp / "outside").iterdir()) == [] and [p.name for p in (tmp / "sandbox").iterdir()] == ["dest"]
        assert not any(p.is_symlink() for p in dest.rglob("*"))
        assert not any(p.stat().st_mode & (stat.S_ISUID | stat.S_IWOTH) for p in dest.rglob("*"))


@FAST
@given(st.lists(members, max_size=6), st.booleans())
def test_hand_made_archives_extract_safely_or_fail_as_bad_input(entries: list, compress: bool) -> None:
    try:
        raw = hand_made_tar(entries, compress)
    except (ValueError, tarfile.TarError):
        assume(False)  # tarfile itself cannot write that member
    check_extract(raw)


@pytest.fixture(scope="module")
def bundle_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real archive from write_archive, small enough to damage quickly."""
    folder = tmp_path_factory.mktemp("src") / "b-rpi5"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "model.onnx").write_bytes(os.urandom(3000))
    (folder / "run.py").write_text("print('hi')\n" * 50)
    write_archive(folder, folder.parent / "b.tar.gz")
    return folder.parent / "b.tar.gz"


@FAST
@given(data=st.data())
def test_damaged_archives_fail_as_bad_input(bundle_archive: Path, data: st.DataObject) -> None:
    raw = bytearray(bundle_archive.read_bytes())
    if data.draw(st.booleans()):  # damage the tar itself, not only its gzip stream
        raw = bytearray(gzip.decompress(raw))
    how = data.draw(st.sampled_from(["flip", "truncate", "garbage"]))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw = bytearray(data.draw(st.binary(max_size=600)))
    check_extract(bytes(raw))


# ---------------------------------------------------------------- manifests and the smoke test (device side)


@FAST
@given(st.one_of(st.binary(max_size=200), st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8).map(lambda v: json.dumps(v).encode()), st.integers(1, 200).map(lambda n: b"[" * n * 50)))
def test_read_manifest_returns_an_object_or_says_why(raw: bytes) -> None:
    with scratch() as tmp:
        (tmp / "manifest.json").write_bytes(raw)
        try:
            manifest = runner().read_manifest(tmp)
        except ValueError as e:
            assert str(e) and "\n" not in str(e) and "manifest.json" in str(e)
        else:
            assert isinstance(manifest, dict)


@pytest.fixture(scope="module")
def silero(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sample:silero-vad packaged for rpi5 and unpacked: the bundle the smoke test checks."""
    out = tmp_path_factory.mktemp("silero")
    proc = run_cli("package", "sample:silero-vad", "--target", "rpi5", "--out", str(out / "dist"), "--json")
    assert proc.returncode == 0, proc.stderr
    return unpack(Path(json.loads(proc.stdout)["archive"]), out / "unpacked")


@pytest.fixture(scope="module")
def smoke_test() -> Any:
    """targets/smoke_test.py, in this process: a fresh interpreter per example would take a second each."""
    spec = importlib.util.spec_from_file_location("packager_smoke_test_props", targets_dir() / "smoke_test.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def json_values() -> st.SearchStrategy[Any]:
    # Small ints only: a thread count of a billion would be obeyed, not refused.
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 16), st.sampled_from([2**64, -2**64, 10**30]),
                        st.floats(), st.text(max_size=12), st.sampled_from(["model/model.onnx", "../../etc/passwd",
                                                                             "/dev/zero", "samples/inputs.npz",
                                                                             "model/\nPASS"]))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                        max_leaves=5)


@st.composite
def manifest_variants(draw: Any, original: bytes) -> bytes:
    if draw(st.integers(0, 9)) == 0:  # now and then, not JSON at all
        return draw(st.binary(max_size=100))
    manifest = json.loads(original)
    for _ in range(draw(st.integers(1, 2))):
        # The parts the smoke test reads most, more often than the rest.
        parts = [manifest.get(k) for k in ("files", "runtime")]
        mutate(draw(st.sampled_from([manifest, *(p for p in parts if p and isinstance(p, (dict, list)))])), draw,
               json_values())
    return json.dumps(manifest, allow_nan=True).encode()


def run_smoke_test(module: Any, folder: Path, *args: str) -> tuple[int, list[str]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = module.main(["--bundle", str(folder), *args])
    return code, out.getvalue().splitlines()


def smoke_with_manifest(module: Any, folder: Path, manifest: bytes) -> tuple[int, list[str]]:
    """Run the smoke test with `manifest` as manifest.json, SHA256SUMS rewritten to match (so the
    checks go past the checksums); the bundle is restored afterwards."""
    original = (folder / "manifest.json").read_bytes()
    sums = (folder / "SHA256SUMS").read_text()
    try:
        (folder / "manifest.json").write_bytes(manifest)
        digest = runner().sha256_file(folder / "manifest.json")
        (folder / "SHA256SUMS").write_text(re.sub(r"^\w+(  manifest\.json)$", rf"{digest}\1", sums, flags=re.M))
        return run_smoke_test(module, folder)
    finally:
        (folder / "manifest.json").write_bytes(original)
        (folder / "SHA256SUMS").write_text(sums)


def assert_verdict(code: int, lines: list[str]) -> None:
    assert lines, "no verdict"
    verdict = lines[-1]
    assert verdict == "PASS" or (verdict.startswith("FAIL: ") and len(verdict) > len("FAIL: ")), lines
    assert (code == 0) == (verdict == "PASS") and code in (0, 1), (code, lines)
    assert "Traceback" not in "\n".join(lines)


@settings(max_examples=max(10, EXAMPLES * 2 // 3), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_smoke_test_says_pass_or_fail_for_any_manifest(silero: Path, smoke_test: Any, data: st.DataObject) -> None:
    """Whatever manifest.json holds, the smoke test ends in one verdict line, exit 0 only on PASS,
    and never raises."""
    variant = data.draw(manifest_variants((silero / "manifest.json").read_bytes()))
    assert_verdict(*smoke_with_manifest(smoke_test, silero, variant))


@FAST
@given(st.integers(0, 100), st.one_of(st.text(min_size=1, max_size=24), st.sampled_from(
    ["model/\nPASS", "x\r\nPASS", "a\u2028PASS", "a\x85b", "../../../../etc/passwd", "/etc/passwd", "model", ""])))
def test_smoke_verdict_is_the_last_line_whatever_a_file_is_called(silero: Path, smoke_test: Any, index: int,
                                                                   name: str) -> None:
    """A file name in the manifest is data: a line break in it must not put a line (such as PASS) after the verdict."""
    manifest = json.loads((silero / "manifest.json").read_bytes())
    manifest["files"][index % len(manifest["files"])]["path"] = name
    assert_verdict(*smoke_with_manifest(smoke_test, silero, json.dumps(manifest).encode()))


@FAST
@given(st.binary(max_size=120), st.binary(max_size=200), st.booleans())
def test_signature_check_refuses_with_one_sentence(silero: Path, sig: bytes, key: bytes, real_key: bool) -> None:
    """Any manifest.sig against any key file (or the wrong real one): SignatureError, never anything else."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    rt = runner()
    with scratch() as tmp:
        key_path = tmp / "key.pub"
        key_path.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo) if real_key else key)
        try:
            (silero / "manifest.sig").write_bytes(sig)
            with pytest.raises(rt.SignatureError) as e:
                rt.verify_signature(silero, key_path)
        finally:
            (silero / "manifest.sig").unlink()
    assert str(e.value) and "\n" not in str(e.value)
