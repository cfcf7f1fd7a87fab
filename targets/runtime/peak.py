"""The process's resident memory and its high-water mark, from /proc (Linux), with a fallback elsewhere."""

import sys


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    """Peak resident memory of this process since the last reset_peak()."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    import resource  # ru_maxrss: kilobytes on Linux, bytes on macOS; never reset

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def rss_bytes() -> int:
    rss = _status_bytes("VmRSS")
    return rss if rss is not None else peak_bytes()
