"""Shared helpers of the benchmark scripts: timing, peak memory, the CPU's sgemm roof, tables."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch


def timeit(fn: Callable[[], object], reps: int = 3, warmup: int = 1) -> float:
    """Best wall time of ``reps`` calls after ``warmup`` calls, in seconds."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _malloc_trim() -> None:
    """Hand freed heap memory back to the OS (glibc), so the baseline RSS does not hide a re-allocation.

    glibc raises its mmap threshold (up to 32 MB) after large frees; tensors below it then come from the
    heap and stay resident after being freed, and a peak measured after a warm-up run would read ~0.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(fn: Callable[[], object]) -> float:
    """Peak resident memory added while ``fn`` runs, in MB (Linux: resets VmHWM via clear_refs)."""
    import gc

    gc.collect()
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return float("nan")
    base = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - base) / 1024


def sgemm_gflops(n: int = 4096, reps: int = 3) -> float:
    """FP32 matmul rate of this machine (the practical roof for dense kernels), GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = timeit(lambda: a @ b, reps=reps)
    return 2 * n**3 / t / 1e9


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """``columns``: (key, header, format)."""
    widths = [max(len(h), *(len(format(r[k], f)) if r.get(k) is not None else 1 for r in rows)) for k, h, f in columns]
    print("  ".join(h.rjust(w) if i else h.ljust(w) for i, ((k, h, f), w) in enumerate(zip(columns, widths))))
    for r in rows:
        cells = []
        for i, ((k, _h, f), w) in enumerate(zip(columns, widths)):
            v = r.get(k)
            s = "-" if v is None else format(v, f)
            cells.append(s.rjust(w) if i else s.ljust(w))
        print("  ".join(cells))


def threads_note() -> str:
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores"
