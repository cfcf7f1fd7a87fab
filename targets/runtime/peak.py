"""The process's resident memory and its high-water mark, from /proc (Linux), with a fallback elsewhere; and the
C library's setting that keeps the heap from holding what a model's load freed."""

import os
import sys

M_MMAP_THRESHOLD = -3             # mallopt(3)'s parameter number in glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024       # glibc's own starting value


def fix_mmap_threshold() -> bool:
    """Hold glibc's mmap threshold at its starting 128 KiB. glibc raises it whenever a mapped block is freed (up to
    32 MiB), and blocks under the raised threshold then come from the heap, which keeps them once freed: a session's
    load (its protobuf's buffers freed as the tensors are made) left 20-140 MiB of heap behind, a different amount in
    each run (docs/memory.md, "The C library's heap"). Held, such blocks are mapped and handed back when freed.
    Called before the first session is made; False where the C library is not glibc (musl, macOS, Windows)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):   # no such confstr name (not glibc), no libc to open
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


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
