"""Nothing of a bundle's runs or is imported before the whole folder is checked (issue 17, item 1): a file
added beside the bundle's own (a numpy.py, a sitecustomize.py, a cached .pyc, a file that only SHA256SUMS
lists) is refused with a key and without one, by the host (`packager smoke`), by the bundle's own smoke test
and by a trusted copy of it; the bundle's scripts never import from their own folder. And archives that
declare more than they could hold are refused before a byte is extracted (item 7)."""

from __future__ import annotations

import importlib._bootstrap_external as bootstrap
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_cli, unpack
from packager import archive
from packager.archive import write_archive
from packager.device_code import runner
from packager.errors import ExitCode, PackagerError
from packager.paths import targets_dir

# Each writes a marker file and prints PASS: the attack the issue reproduced.
PAYLOAD = 'import os;open(os.environ["PWN_MARKER"],"w");print("PASS");os._exit(0)\n'
SHADOWED = ["numpy", "json", "argparse", "__future__", "hashlib", "pathlib", "types", "onnxruntime"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("keys")
    proc = run_cli("keygen", str(folder / "k.pem"), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    return Path(out["private_key"]), Path(out["public_key"])


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> dict[str, Path]:
    """sample:silero-vad for rpi5, signed and unsigned."""
    out = tmp_path_factory.mktemp("dist")
    made = {}
    for name, extra in (("signed", ["--sign", str(keys[0])]), ("unsigned", [])):
        proc = run_cli("package", "sample:silero-vad", "--target", "rpi5", "--out", str(out / name), "--json", *extra)
        assert proc.returncode == 0, proc.stderr
        made[name] = Path(json.loads(proc.stdout)["archive"])
    return made


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def fresh(archives: dict[str, Path], kind: str, tmp_path: Path) -> Path:
    return unpack(archives[kind], tmp_path / f"u-{kind}")


def env_with(marker: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PACKAGER_PUBLIC_KEY", "PYTHONSAFEPATH")}
    return env | {"PWN_MARKER": str(marker), "PYTHONDONTWRITEBYTECODE": "1"}


def device(folder: Path, marker: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python ARGS` in the bundle folder, as on the device: the script's folder first on sys.path."""
    return subprocess.run([sys.executable, *args], cwd=folder, capture_output=True, text=True, timeout=300,
                          env=env_with(marker))


def host_smoke(bundle: Path, marker: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("smoke", str(bundle), *args, env={"PACKAGER_PUBLIC_KEY": "", "PWN_MARKER": str(marker)})


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def assert_refused(proc: subprocess.CompletedProcess[str], marker: Path, name: str) -> None:
    out = proc.stdout + proc.stderr
    assert not marker.exists(), f"the added file ran:\n{out}"
    assert proc.returncode != 0 and "PASS" != last_line(proc), out
    assert name in out and "refusing to run it" in out, out


@pytest.mark.parametrize("module", SHADOWED)
def test_added_module_never_runs_in_a_signed_bundle(archives: dict, keys: tuple, tmp_path: Path, marker: Path,
                                                    module: str) -> None:
    """The issue's reproduction, for several module names: the host, the bundle's own smoke test and a trusted
    copy all refuse it, and none imports it."""
    folder = fresh(archives, "signed", tmp_path)
    (folder / f"{module}.py").write_text(PAYLOAD)
    public = str(keys[1])
    proc = host_smoke(folder, marker, "--public-key", public)
    assert proc.returncode == ExitCode.SMOKE_FAILED
    assert_refused(proc, marker, f"{module}.py is in the bundle but not in the signed manifest.json")
    assert_refused(device(folder, marker, "smoke_test.py", "--public-key", public), marker, f"{module}.py")
    assert_refused(device(folder, marker, "run.py", "--inputs", "samples/inputs.npz", "--public-key", public),
                   marker, f"{module}.py")
    trusted = tmp_path / "verified"
    trusted.mkdir()
    for name in ("run.py", "smoke_test.py"):
        shutil.copyfile(targets_dir() / name, trusted / name)
    shutil.copytree(targets_dir() / "runtime", trusted / "runtime")
    assert_refused(device(tmp_path, marker, str(trusted / "smoke_test.py"), "--bundle", str(folder),
                          "--public-key", public), marker, f"{module}.py")


@pytest.mark.parametrize("added", ["sitecustomize.py", "usercustomize.py", "evil.pth", "model/numpy.py",
                                   "samples/extra.npz", ".hidden", "lib/json/__init__.py"])
def test_any_added_file_is_refused_with_and_without_a_key(archives: dict, keys: tuple, tmp_path: Path,
                                                          marker: Path, added: str) -> None:
    for kind, args in (("signed", ("--public-key", str(keys[1]))), ("unsigned", ())):
        folder = fresh(archives, kind, tmp_path)
        (folder / added).parent.mkdir(parents=True, exist_ok=True)
        (folder / added).write_text(PAYLOAD if added.endswith(".py") else "import os; os._exit(3)\n")
        proc = host_smoke(folder, marker, *args)
        assert proc.returncode == ExitCode.SMOKE_FAILED, proc.stdout + proc.stderr
        first = added.split("/")[0] + "/" if added.startswith("lib/") else added
        assert_refused(proc, marker, first)
        assert_refused(device(folder, marker, "smoke_test.py", *args), marker, first)


def test_cached_bytecode_is_never_loaded_in_place_of_run_py(archives: dict, keys: tuple, tmp_path: Path,
                                                            marker: Path) -> None:
    """A __pycache__/run.*.pyc stamped with run.py's own mtime and size is what the import system would load
    instead of the source: the smoke test compiles run.py from its (checked) bytes and refuses the cache."""
    for kind, args in (("signed", ("--public-key", str(keys[1]))), ("unsigned", ())):
        folder = fresh(archives, kind, tmp_path)
        source = folder / "run.py"
        st_ = source.stat()
        code = compile(PAYLOAD, str(source), "exec")
        cache = folder / "__pycache__" / f"run.{sys.implementation.cache_tag}.pyc"
        cache.parent.mkdir()
        cache.write_bytes(bootstrap._code_to_timestamp_pyc(code, st_.st_mtime, st_.st_size))
        proc = device(folder, marker, "smoke_test.py", *args)
        assert_refused(proc, marker, "__pycache__/")
        assert "delete the __pycache__ folder" in proc.stdout


def test_file_listed_only_in_sha256sums_is_refused(archives: dict, keys: tuple, tmp_path: Path,
                                                    marker: Path) -> None:
    """SHA256SUMS is not signed: regenerated over an added file it proves nothing, with a key or without."""
    for kind, args in (("signed", ("--public-key", str(keys[1]))), ("unsigned", ())):
        folder = fresh(archives, kind, tmp_path)
        (folder / "evil.py").write_text(PAYLOAD)
        regenerated = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                             if p.is_file() and p.name != "SHA256SUMS")
        (folder / "SHA256SUMS").write_text("".join(f"{runner().sha256_file(folder / p)}  {p}\n" for p in regenerated))
        proc = host_smoke(folder, marker, *args)
        assert proc.returncode == ExitCode.SMOKE_FAILED
        assert_refused(proc, marker, "evil.py")
        assert_refused(device(folder, marker, "smoke_test.py", *args), marker, "evil.py")


def test_repacked_archive_with_an_added_module_is_refused(archives: dict, keys: tuple, tmp_path: Path,
                                                          marker: Path) -> None:
    folder = fresh(archives, "signed", tmp_path)
    (folder / "numpy.py").write_text(PAYLOAD)
    repacked = tmp_path / "repacked.tar.gz"
    write_archive(folder, repacked)
    for args in (("--public-key", str(keys[1])), ()):
        proc = host_smoke(repacked, marker, *args)
        assert proc.returncode == ExitCode.SMOKE_FAILED
        assert_refused(proc, marker, "numpy.py")


def test_bundle_scripts_never_import_from_their_own_folder(archives: dict, tmp_path: Path, marker: Path) -> None:
    """Without a key `python run.py` checks no file (hashing the weights on every run would cost seconds), but it
    takes its own folder off sys.path before its first import: a shadowing module there is never imported."""
    folder = fresh(archives, "unsigned", tmp_path)
    for module in SHADOWED:
        (folder / f"{module}.py").write_text(PAYLOAD)
    proc = device(folder, marker, "run.py", "--inputs", "samples/inputs.npz")
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    assert json.loads(proc.stdout)  # the model's real outputs, from the real numpy


def test_a_virtual_environment_inside_the_bundle_is_refused_with_the_fix(archives: dict, tmp_path: Path,
                                                                        marker: Path) -> None:
    folder = fresh(archives, "unsigned", tmp_path)
    (folder / ".venv").mkdir()
    (folder / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    proc = device(folder, marker, "smoke_test.py")
    assert last_line(proc).startswith("FAIL: .venv/ is in the bundle but not in SHA256SUMS")
    assert "make it outside the bundle folder" in proc.stdout
    readme = (folder / "README.md").read_text()
    assert "python3 -m venv ~/venvs/silero-vad-rpi5" in readme and ".venv" not in readme


def test_links_and_stray_folders_are_refused(archives: dict, keys: tuple, tmp_path: Path, marker: Path) -> None:
    for make, name in ((lambda f: (f / "empty").mkdir(), "empty/"),
                       (lambda f: (f / "link.py").symlink_to(f / "run.py"), "link.py"),
                       (lambda f: os.mkfifo(f / "fifo"), "fifo")):
        folder = fresh(archives, "signed", tmp_path)
        make(folder)
        proc = host_smoke(folder, marker, "--public-key", str(keys[1]))
        assert proc.returncode == ExitCode.SMOKE_FAILED and f"{name} is in the bundle" in proc.stdout + proc.stderr
        shutil.rmtree(folder)


def test_a_clean_bundle_still_passes_everywhere(archives: dict, keys: tuple, tmp_path: Path, marker: Path) -> None:
    folder = fresh(archives, "signed", tmp_path)
    assert host_smoke(folder, marker, "--public-key", str(keys[1])).returncode == 0
    assert last_line(device(folder, marker, "smoke_test.py", "--public-key", str(keys[1]))) == "PASS"
    assert host_smoke(archives["unsigned"], marker).returncode == 0
    assert not (folder / "__pycache__").exists()


# ---------------------------------------------------------------- any change to a signed bundle


@st.composite
def changes(draw: st.DrawFn, files: list[str]) -> tuple[str, str, int]:
    kind = draw(st.sampled_from(["flip", "remove", "add", "append"]))
    target = draw(st.sampled_from(files))
    return kind, target, draw(st.integers(0, 2**31))


@pytest.fixture(scope="module")
def signed_folder(archives: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack(archives["signed"], tmp_path_factory.mktemp("pristine"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_byte_or_file_added_removed_or_changed_is_refused(signed_folder: Path, keys: tuple,
                                                              tmp_path_factory: pytest.TempPathFactory,
                                                              data: st.DataObject) -> None:
    """The checks before anything of the bundle's runs (packager's copy of the device's: the signature, then the
    files) refuse every altered bundle, whichever file, SHA256SUMS included."""
    files = sorted(p.relative_to(signed_folder).as_posix() for p in signed_folder.rglob("*") if p.is_file())
    kind, target, seed = data.draw(changes(files))
    folder = tmp_path_factory.mktemp("changed") / "b"
    shutil.copytree(signed_folder, folder)
    path = folder / target
    if kind == "flip":
        raw = bytearray(path.read_bytes())
        if not raw:
            raw = bytearray(b"\0")
        raw[seed % len(raw)] ^= 1 << (seed % 8)
        path.write_bytes(bytes(raw))
    elif kind == "remove":
        path.unlink()
    elif kind == "append":
        with open(path, "ab") as f:
            f.write(b"\n")
    else:
        name = data.draw(st.text(st.characters(codec="ascii", exclude_characters="/\0"), min_size=1, max_size=12)
                         .filter(lambda n: n not in (".", "..")))
        new = path.parent / name
        if new.exists():
            return
        new.write_bytes(b"x")
    rt = runner()
    with pytest.raises(ValueError):  # what smoke_test.py runs first, in this order; SHA256SUMS is not signed
        rt.verify_signature(folder, keys[1])
        rt.check_files(folder, rt.read_manifest(folder))
    shutil.rmtree(folder.parent)


# ---------------------------------------------------------------- archives that claim more than they hold


def tar_gz(path: Path, entries: list[tarfile.TarInfo], data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        top = tarfile.TarInfo("b")
        top.type = tarfile.DIRTYPE
        tar.addfile(top)
        for info in entries:
            tar.addfile(info, io.BytesIO(data[:info.size]) if info.isfile() else None)
    return path


def test_a_terabyte_sparse_member_is_refused_at_once(tmp_path: Path) -> None:
    """The issue's reproduction: a small archive holding a 1 TiB GNU-sparse member kept `packager smoke` busy
    past 300 s. It is refused before extraction, and nothing is written."""
    huge = tarfile.TarInfo("b/model/model.onnx")
    huge.size = 1
    huge.pax_headers = {"GNU.sparse.map": "0,1", "GNU.sparse.size": str(2**40), "GNU.sparse.numblocks": "1"}
    path = tar_gz(tmp_path / "sparse.tar.gz", [huge], b"y")
    start = time.monotonic()
    proc = run_cli("smoke", str(path))
    assert time.monotonic() - start < 60
    assert proc.returncode == ExitCode.BAD_INPUT
    assert "is a sparse file, which packager never writes" in proc.stderr


def test_declared_sizes_past_what_the_archive_can_hold_are_refused(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A gzip stream of zeros: a few KiB that unpack to far more than any bundle of that archive size holds."""
    monkeypatch.setattr(archive, "EXPANSION_FLOOR", 2**20)
    zeros = tarfile.TarInfo("b/model.onnx")
    zeros.size = 8 * 2**20
    path = tar_gz(tmp_path / "zeros.tar.gz", [zeros], bytes(zeros.size))
    assert path.stat().st_size * archive.EXPANSION_LIMIT < zeros.size
    with pytest.raises(PackagerError) as e:
        archive.extract_bundle(path, tmp_path / "dest")
    assert (e.value.code == ExitCode.BAD_INPUT
            and "more than a bundle archive of this size unpacks to" in e.value.message)
    assert not (tmp_path / "dest").exists()


def test_too_many_entries_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_MEMBERS", 5)
    entries = []
    for i in range(7):
        info = tarfile.TarInfo(f"b/{i}")
        info.size = 0
        entries.append(info)
    with pytest.raises(PackagerError) as e:
        archive.extract_bundle(tar_gz(tmp_path / "many.tar.gz", entries), tmp_path)
    assert e.value.code == ExitCode.BAD_INPUT and "more than 5 entries" in e.value.message


def test_no_room_to_unpack_is_an_output_error_naming_the_folder(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    info = tarfile.TarInfo("b/smoke_test.py")
    info.size = 4096
    path = tar_gz(tmp_path / "b.tar.gz", [info], b"x" * 4096)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(PackagerError) as e:
        archive.extract_bundle(path, dest)
    assert e.value.code == ExitCode.OUTPUT and str(dest) in e.value.message and "free some space" in e.value.message
    assert not any(dest.iterdir())
