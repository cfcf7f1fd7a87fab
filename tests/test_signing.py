"""Signed bundles: `packager keygen`, `package --sign`, and the check on the device (run.py, smoke_test.py)
and on the host (`packager smoke --public-key`): a valid signature passes; a wrong key, a re-signed or
altered bundle and an unsigned one are refused whenever a key is configured."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import run_cli, unpack
from packager import emulate
from packager.signing import sign_manifest

HAVE_QEMU = any(shutil.which(name) for name in emulate.QEMU_BINARIES)


def keygen(folder: Path, name: str = "key") -> tuple[Path, Path, str]:
    proc = run_cli("keygen", str(folder / name), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    return Path(out["private_key"]), Path(out["public_key"]), out["public_key_sha256"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def device_env(public_key: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PACKAGER_PUBLIC_KEY"}
    return env | ({"PACKAGER_PUBLIC_KEY": str(public_key)} if public_key else {})


def on_device(folder: Path, *args: str, public_key: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python ARGS` in the unpacked bundle, as on the device, with PACKAGER_PUBLIC_KEY set or not."""
    return subprocess.run([sys.executable, *args], cwd=folder, capture_output=True, text=True, timeout=300,
                          env=device_env(public_key) | {"PYTHONDONTWRITEBYTECODE": "1"})


def smoke(bundle: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    proc = run_cli("smoke", str(bundle), "--json", *args, env={"PACKAGER_PUBLIC_KEY": ""})
    return proc, json.loads(proc.stdout) if proc.stdout.strip() else {}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, str]]:
    folder = tmp_path_factory.mktemp("keys")
    return {"publisher": keygen(folder, "publisher"), "other": keygen(folder, "other")}


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, keys: dict) -> dict:
    """sample:silero-vad for rpi5, signed with the publisher's key and smoke-tested with its public half.
    A device key in the build host's environment changes neither: the fit stage measures the bundle
    before it is signed, and `--smoke` checks with the --sign key's own public half."""
    out = tmp_path_factory.mktemp("signed") / "dist"
    private, _, _ = keys["publisher"]
    proc = run_cli("package", "sample:silero-vad", "--target", "rpi5", "--out", str(out), "--sign", str(private),
                   "--smoke", "host", "--json", env={"PACKAGER_PUBLIC_KEY": str(keys["other"][1])})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def unsigned(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("unsigned") / "dist"
    proc = run_cli("package", "sample:silero-vad", "--target", "rpi5", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def folder(signed: dict, tmp_path: Path) -> Path:
    """A fresh unpacked copy of the signed bundle, to tamper with."""
    return unpack(Path(signed["archive"]), tmp_path / "unpacked")


def rewrite_checksums(folder: Path) -> None:
    """What an attacker who can write the bundle does after changing a file: recompute the manifest's
    file hashes and SHA256SUMS so that every checksum agrees again."""
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["files"]:
        entry["sha256"], entry["size"] = sha256(folder / entry["path"]), (folder / entry["path"]).stat().st_size
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    rewrite_sums(folder)


def rewrite_sums(folder: Path) -> None:
    names = [line.split("  ", 1)[1] for line in (folder / "SHA256SUMS").read_text().splitlines()]
    (folder / "SHA256SUMS").write_text("".join(f"{sha256(folder / n)}  {n}\n" for n in names))


def tamper_model(folder: Path) -> None:
    """A different model file that still loads and answers the same: checksums alone cannot tell."""
    path = folder / "model" / "model.onnx"
    model = onnx.load(str(path))
    model.doc_string = "tampered"
    onnx.save(model, str(path))


def assert_refused(folder: Path, public_key: Path, *phrases: str) -> None:
    """Refused by the host's check, the bundle's smoke test and its runner, with the same reason."""
    proc, result = smoke(folder, "--public-key", str(public_key))
    assert proc.returncode == 8, proc.stderr
    assert result["verdict"].startswith("FAIL: ") and all(p in result["verdict"] for p in phrases), result["verdict"]
    test = on_device(folder, "smoke_test.py", "--public-key", str(public_key))
    assert test.returncode == 1 and test.stdout.splitlines()[-1].startswith("FAIL: "), test.stdout + test.stderr
    assert all(p in test.stdout.splitlines()[-1] for p in phrases), test.stdout
    runner = on_device(folder, "run.py", "--inputs", "samples/inputs.npz", public_key=public_key)
    assert runner.returncode == 2 and runner.stdout == "", runner.stdout + runner.stderr
    assert runner.stderr.count("\n") == 1 and runner.stderr.startswith("error: ") and "Traceback" not in runner.stderr
    assert all(p in runner.stderr for p in phrases), runner.stderr


# ---------------------------------------------------------------- keygen


def test_keygen_writes_a_pem_pair_and_the_private_key_is_private(tmp_path: Path) -> None:
    private, public, fingerprint = keygen(tmp_path)
    assert public == tmp_path / "key.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")          # PKCS8
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")            # SubjectPublicKeyInfo
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert fingerprint == hashlib.sha256(raw).hexdigest()
    other = run_cli("keygen", str(tmp_path / "second"), "--public", str(tmp_path / "elsewhere.pem"), "--json")
    assert other.returncode == 0 and (tmp_path / "elsewhere.pem").is_file() and not (tmp_path / "second.pub").exists()


@pytest.mark.parametrize("existing", ["key", "key.pub"])
def test_keygen_never_overwrites_a_key(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious\n")
    proc = run_cli("keygen", str(tmp_path / "key"))
    assert proc.returncode == 9 and "Traceback" not in proc.stderr
    assert "already exists" in proc.stderr and "never overwrites" in proc.stderr
    assert (tmp_path / existing).read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]   # no half key pair left behind


def test_keygen_into_a_missing_folder(tmp_path: Path) -> None:
    proc = run_cli("keygen", str(tmp_path / "no" / "key"), "--json")
    assert proc.returncode == 9 and json.loads(proc.stdout)["exit_code"] == 9
    assert "cannot write the key there" in proc.stderr and not (tmp_path / "no").exists()


# ---------------------------------------------------------------- a valid signature


def test_signed_bundle_records_its_key_and_lists_the_signature(signed: dict, keys: dict, tmp_path: Path) -> None:
    assert signed["smoke"]["verdict"] == "PASS"
    assert signed["smoke"]["report"]["signature"]["checked"] is True    # package --sign --smoke checks its own work
    fingerprint = keys["publisher"][2]
    assert signed["signature"] == {"algorithm": "ed25519", "public_key_sha256": fingerprint}
    folder = unpack(Path(signed["archive"]), tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["signature"] == {"algorithm": "ed25519", "public_key_sha256": fingerprint}
    sums = dict(reversed(line.split("  ", 1)) for line in (folder / "SHA256SUMS").read_text().splitlines())
    assert sums["manifest.sig"] == sha256(folder / "manifest.sig")
    assert "cryptography==" in (folder / "requirements.txt").read_text()


def test_valid_signature_passes_on_the_host_and_the_device(signed: dict, keys: dict, folder: Path) -> None:
    public, fingerprint = keys["publisher"][1], keys["publisher"][2]
    proc, result = smoke(Path(signed["archive"]), "--public-key", str(public))
    assert proc.returncode == 0 and result["verdict"] == "PASS", proc.stderr
    assert result["report"]["signature"] == {"signed": True, "checked": True, "public_key_sha256": fingerprint}
    test = on_device(folder, "smoke_test.py", "--public-key", str(public))
    assert test.returncode == 0 and test.stdout.splitlines()[-1] == "PASS", test.stdout + test.stderr
    assert f"signature: verified with the configured key (sha256 {fingerprint[:16]}" in test.stdout
    runner = on_device(folder, "run.py", "--inputs", "samples/inputs.npz", public_key=public)
    assert runner.returncode == 0 and runner.stderr == "", runner.stderr
    assert len(json.loads(runner.stdout)) == 4
    # $PACKAGER_PUBLIC_KEY works for `packager smoke` too.
    env_smoke = run_cli("smoke", signed["archive"], "--json", env={"PACKAGER_PUBLIC_KEY": str(public)})
    assert env_smoke.returncode == 0 and json.loads(env_smoke.stdout)["report"]["signature"]["checked"] is True


def test_signed_bundle_without_a_key_passes_with_a_note(signed: dict, folder: Path) -> None:
    proc, result = smoke(Path(signed["archive"]))
    assert proc.returncode == 0 and result["verdict"] == "PASS"
    assert result["report"]["signature"]["checked"] is False and "not checked" in result["report"]["signature"]["note"]
    human = run_cli("smoke", signed["archive"], env={"PACKAGER_PUBLIC_KEY": ""})
    assert human.returncode == 0 and "signature was not checked" in human.stderr
    test = on_device(folder, "smoke_test.py")
    assert test.returncode == 0 and "note: this bundle is signed, but its signature was not checked" in test.stdout
    runner = on_device(folder, "run.py", "--inputs", "samples/inputs.npz")
    assert (runner.returncode == 0 and "signature was not checked" in runner.stderr
            and "PACKAGER_PUBLIC_KEY" in runner.stderr)


# ---------------------------------------------------------------- refused


def test_wrong_key_is_refused(keys: dict, folder: Path) -> None:
    assert_refused(folder, keys["other"][1], "signed with another key")


def test_re_signed_bundle_is_refused(keys: dict, folder: Path) -> None:
    """The attacker changes the model, rewrites every checksum and signs with their own key."""
    tamper_model(folder)
    rewrite_checksums(folder)
    attacker_private, attacker_public, attacker_fingerprint = keys["other"]
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["signature"]["public_key_sha256"] = attacker_fingerprint
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    sign_manifest(attacker_private, folder)
    rewrite_sums(folder)
    assert on_device(folder, "smoke_test.py", "--public-key", str(attacker_public)).returncode == 0  # consistent
    assert_refused(folder, keys["publisher"][1], "signed with another key")


def test_modified_model_with_checksums_rewritten_is_refused(keys: dict, folder: Path) -> None:
    tamper_model(folder)
    rewrite_checksums(folder)
    # Checksums alone prove integrity, not origin: without a key the altered bundle passes.
    proc, result = smoke(folder)
    assert proc.returncode == 0 and result["verdict"] == "PASS", result
    assert_refused(folder, keys["publisher"][1], "manifest.json does not match its signature", "altered after signing")


def test_modified_file_with_only_sha256sums_rewritten_is_refused(keys: dict, folder: Path) -> None:
    """The signed manifest's own file hashes catch a file changed behind its back."""
    tamper_model(folder)
    rewrite_sums(folder)
    assert_refused(folder, keys["publisher"][1], "model/model.onnx does not match the signed manifest.json")


def test_unsigned_bundle_is_refused_when_a_key_is_configured(unsigned: dict, keys: dict, tmp_path: Path) -> None:
    folder = unpack(Path(unsigned["archive"]), tmp_path)
    assert not (folder / "manifest.sig").exists()
    assert "signature" not in json.loads((folder / "manifest.json").read_text())
    assert "cryptography" not in (folder / "requirements.txt").read_text()
    assert_refused(folder, keys["publisher"][1], "not signed")
    # Without a key it is what it always was: no note, no cryptography needed.
    runner = on_device(folder, "run.py", "--inputs", "samples/inputs.npz")
    assert runner.returncode == 0 and runner.stderr == ""


def test_stripped_signature_is_refused(keys: dict, folder: Path) -> None:
    """Removing manifest.sig (and its SHA256SUMS line) makes the bundle unsigned, which a key refuses."""
    (folder / "manifest.sig").unlink()
    sums = (folder / "SHA256SUMS").read_text().splitlines(keepends=True)
    (folder / "SHA256SUMS").write_text("".join(line for line in sums if not line.endswith("  manifest.sig\n")))
    assert_refused(folder, keys["publisher"][1], "not signed")


def test_garbled_signature_file_is_refused(keys: dict, folder: Path) -> None:
    (folder / "manifest.sig").write_text("not base64 at all\n")
    rewrite_sums(folder)
    assert_refused(folder, keys["publisher"][1], "manifest.sig is not a base64 Ed25519 signature")


def test_host_check_runs_before_any_bundle_code(keys: dict, folder: Path) -> None:
    """`packager smoke --public-key` verifies with packager's own copy of the check: a tampered bundle's
    smoke_test.py never runs."""
    marker = folder.parent / "ran"
    (folder / "smoke_test.py").write_text(f"open({str(marker)!r}, 'w').close()\nprint('PASS')\n")
    rewrite_sums(folder)
    proc, result = smoke(folder, "--public-key", str(keys["publisher"][1]))
    assert proc.returncode == 8 and "smoke_test.py does not match the signed manifest.json" in result["verdict"]
    assert not marker.exists()


# ---------------------------------------------------------------- bad key files


def _rsa_key(path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _encrypted_key(path: Path) -> Path:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    return path


@pytest.mark.parametrize("make, phrase", [
    (lambda d, k: d / "missing.pem", "no such key file"),
    (lambda d, k: k["publisher"][1], "is a public key; --sign takes the private key"),
    (lambda d, k: (d / "junk.pem").write_text("hello\n") and d / "junk.pem", "is not a PEM private key"),
    (lambda d, k: _rsa_key(d / "rsa.pem"), "is not an Ed25519 key"),
    (lambda d, k: _encrypted_key(d / "locked.pem"), "protected by a passphrase"),
])
def test_bad_signing_key_fails_before_any_work(tmp_path: Path, keys: dict, make, phrase: str) -> None:
    out = tmp_path / "dist"
    proc = run_cli("package", "sample:silero-vad", "--target", "rpi5", "--out", str(out), "--sign",
                   str(make(tmp_path, keys)), "--json")
    assert proc.returncode == 5 and json.loads(proc.stdout)["exit_code"] == 5
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr and "✓" not in proc.stderr
    assert phrase in proc.stderr.replace("\n", " ")
    assert not out.exists()


@pytest.mark.parametrize("make, phrase", [
    (lambda d, k: d / "missing.pub", "cannot read the public key"),
    (lambda d, k: k["publisher"][0], "is a private key; install only the publisher's public key"),
    (lambda d, k: (d / "junk.pub").write_text("hello\n") and d / "junk.pub", "is not a PEM public key"),
    (lambda d, k: (d / "rsa.pub").write_bytes(serialization.load_pem_private_key(
        _rsa_key(d / "rsa.pem").read_bytes(), None).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)) and d / "rsa.pub",
     "is not an Ed25519 public key"),
])
def test_bad_public_key_is_bad_input(tmp_path: Path, signed: dict, keys: dict, make, phrase: str) -> None:
    proc, result = smoke(Path(signed["archive"]), "--public-key", str(make(tmp_path, keys)))
    assert proc.returncode == 5 and result["exit_code"] == 5, proc.stderr
    assert phrase in result["error"] and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- the device's own Python and wheels


@pytest.mark.skipif(not HAVE_QEMU, reason="needs qemu-user-static")
def test_signature_verifies_on_an_emulated_pi(signed: dict, keys: dict) -> None:
    """The bundle's pinned `cryptography` installs from its aarch64 wheels and verifies under the device's Python."""
    proc = run_cli("smoke", signed["archive"], "--emulate", "--public-key", str(keys["publisher"][1]), "--json",
                   timeout=1200)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["verdict"] == "PASS" and result["report"]["signature"]["checked"] is True
    assert result["report"]["emulation"]["device_python"].startswith("3.13")
    wrong = run_cli("smoke", signed["archive"], "--emulate", "--public-key", str(keys["other"][1]), "--json")
    assert wrong.returncode == 8 and "signed with another key" in json.loads(wrong.stdout)["verdict"]
