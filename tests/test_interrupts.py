"""packager/interrupts.py: a signal's KeyboardInterrupt waits until no C caller can sit under the frame it lands in
(an import, a finalizer), then stops the run; a second signal stops it at once. Each case runs in a child
interpreter that signals itself while a frame Python cannot safely interrupt is running."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from packager import interrupts

CHILD = """
import os, signal, sys, threading, time
from packager import interrupts
interrupts.install()
interrupts.SAFE_FILES += (__file__,)   # this script stands for packager's own code
def signal_me(after, times=1):
    def send():
        for n in range(times):
            # each signal after the handler has taken the one before: two sent before the main thread runs its
            # handler would reach it as one (a loaded machine starved it past the 0.2 s this once waited)
            while n and not interrupts._pending:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
    threading.Timer(after, send).start()
start = time.monotonic()
try:
{body}
    print("finished", flush=True)
except KeyboardInterrupt:
    print(f"interrupted after {{time.monotonic() - start:.2f}}", flush=True)
"""


def run_child(tmp_path: Path, body: str, files: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(body=textwrap.indent(textwrap.dedent(body), "    ")))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)


def interrupted_after(proc: subprocess.CompletedProcess[str]) -> float:
    assert proc.returncode == 0 and "Exception ignored" not in proc.stderr, proc.stderr
    lines = proc.stdout.split()
    assert "interrupted" in lines, proc.stdout
    return float(lines[-1])


def test_an_import_finishes_before_the_interrupt(tmp_path: Path) -> None:
    proc = run_child(tmp_path, """
        sys.path.insert(0, os.getcwd())
        signal_me(0.3)
        import slow
        print("imported whole:", slow.WHOLE, flush=True)
        time.sleep(5)
    """, {"slow.py": """
        import time
        time.sleep(1.0)
        WHOLE = True
    """})
    assert "imported whole: True" in proc.stdout   # the default handler raises inside the import
    assert 1.0 <= interrupted_after(proc) < 2.0


def test_a_finalizer_does_not_swallow_the_interrupt(tmp_path: Path) -> None:
    proc = run_child(tmp_path, """
        class Slow:
            def __del__(self):
                time.sleep(1.0)
        signal_me(0.3)
        Slow()
        time.sleep(5)
    """)
    # the default handler raises inside __del__: "Exception ignored", and the script finishes
    assert 1.0 <= interrupted_after(proc) < 2.0


def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    proc = run_child(tmp_path, """
        sys.path.insert(0, os.getcwd())
        signal_me(0.3, times=2)
        import slow
        time.sleep(5)
    """, {"slow.py": """
        import time
        time.sleep(3.0)
    """})
    assert interrupted_after(proc) < 1.5   # inside the import: the user insisted


def test_a_signal_still_waiting_when_the_command_returns_is_dropped(tmp_path: Path) -> None:
    """cli.main's end (interrupts.uninstall): the work is done and written; the signal is not raised in the
    interpreter's shutdown, where Python would die by SIGINT (-2) after a whole run."""
    proc = run_child(tmp_path, """
        class Slow:
            def __del__(self):
                time.sleep(1.0)
                interrupts.uninstall()   # the command returned before any safe frame
        signal_me(0.3)
        Slow()
        time.sleep(0.5)
    """)
    assert proc.returncode == 0 and "finished" in proc.stdout, proc.stderr


def test_frames_outside_packager_wait() -> None:
    assert interrupts.safe(None)
    # this test's own frame is neither packager's code nor the standard library's
    assert not interrupts.safe(sys._getframe())


def test_finalizer_frames_are_unsafe() -> None:
    seen: list[bool] = []

    class Probe:
        def __del__(self) -> None:
            seen.append(interrupts.safe(sys._getframe()))

    Probe()
    assert seen == [False]


def test_an_interrupt_that_c_code_turned_into_another_error_is_still_exit_130(tmp_path: Path) -> None:
    """torch's tensor constructor turns a KeyboardInterrupt raised in a Python frame it called into a ValueError (the
    export "failed": exit 10, seen once in CI at the export's first second). A failure after a signal is the signal's:
    exit 130, "interrupted", whatever exception came out."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent("""
        import os, signal, time
        from packager import interrupts
        from packager.cli_common import _guarded
        interrupts.install()
        interrupts.SAFE_FILES += (__file__,)
        def export():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:   # as torch's C++ does
                raise ValueError("could not determine the shape of object type 'torch.storage.UntypedStorage'")
            print("finished", flush=True)
        _guarded(export, debug=False, as_json=False)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert "interrupted; nothing was written." in proc.stderr and "finished" not in proc.stdout
