"""3D neighbourhood attention on the CPU: seg's torch path against PyTorch flex_attention (compiled, with a
block mask; its mask build reported apart), dense SDPA with a boolean mask (where it fits) and the naive
reference, in one process. Ratios are to flex_attention's forward. Memory twice: the peak a call adds in
this process once its shape's plan is cleared (``fwd peak MB``), and the peak the first call adds in a
new process (``fresh-process MB``: every one-time cost counted, the plan, its masks, first-use buffers and
imports; dense SDPA's boolean mask included), as a ratio to dense SDPA's (``x dense``); the fwd+bwd
column is the first training call in a new process (autograd goes through the custom op).

    python scripts/bench_local_attn3d.py [--sizes 16 24 32 40] [--kernels 7 5 9] [--no-flex]

B=1, heads=4, head_dim=32. Useful FLOPs per forward = 4 * N * kernel^3 * head_dim * heads, reported as a
fraction of a large sgemm's FP32 rate measured in the same run. A GPU section (triton vs flex vs SDPA,
triton.testing.do_bench) runs when CUDA is present.

Paper estimate for the Triton forward on an H100 (no GPU here), k=7, bf16, interior tile: a program owns
2x4x8 = 64 queries whose windows' union is (2+6)x(4+6)x(8+6) = 1120 keys: K and V are 2 x 1120 x 32 x
2 B = 143 KB and QK^T + PV is 4 x 64 x 1120 x 32 = 9.2 MFLOP, ~64 FLOP/B, below the H100's ~295 FLOP/B
ridge (990 TFLOP/s bf16 dense / 3.35 TB/s) when halos come from HBM: ~22 % of peak on all FLOPs, of
which 64 x 343 / (64 x 1120) = 31 % are useful, i.e. ~7 % of peak on useful FLOPs; L2 reuse of the
overlapping halos of neighbouring tiles raises it. The dK/dV kernel walks a conservative query halo
(4480 per tile): ~4x that work. NATTEN's fused kernels reach 3.6x cuDNN dense at 91 % sparsity.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import peak_memory_mb, print_table, sgemm_gflops, threads_note, timeit  # noqa: E402

HEADS, HEAD_DIM = 4, 32


def natten_mask_fn(n: int, kernel: int, device: str = "cpu"):
    from seg.ops.local_attn3d.reference import window_start

    st = window_start(n, kernel, 1, device)

    def coords(t):
        return t // (n * n), (t // n) % n, t % n

    def mask_mod(b, h, qi, ki):
        ok = torch.ones_like(qi, dtype=torch.bool)
        for qc, kc in zip(coords(qi), coords(ki)):
            s = st[qc]
            ok = ok & (kc >= s) & (kc < s + kernel)
        return ok

    return mask_mod


def dense_natten_mask(n: int, kernel: int, device: str = "cpu") -> torch.Tensor:
    """``[N, N]`` boolean NATTEN mask of an n^3 volume, for dense SDPA."""
    from seg.ops.local_attn3d.reference import neighbourhood_index

    inside = torch.zeros(n, n, dtype=torch.bool, device=device)
    inside[torch.arange(n, device=device)[:, None], neighbourhood_index(n, kernel, 1, device)] = True
    return (
        inside[:, None, None, :, None, None]
        & inside[None, :, None, None, :, None]
        & inside[None, None, :, None, None, :]
    ).reshape(n**3, n**3)


def fresh_first_call(impl: str, n: int, kernel: int) -> None:
    """In this (new) process: make the inputs, then print the peak RSS the first call adds, in MB: every
    one-time cost of the method counted (seg's cached plan and masks, the kernels' first-use buffers,
    whatever the call imports), as flex_attention's block mask is counted."""
    from seg.ops import local_attn3d

    q, k, v = [torch.randn(1, n, n, n, HEADS, HEAD_DIM) for _ in range(3)]
    if impl == "seg torch":
        with torch.no_grad():
            m = peak_memory_mb(lambda: local_attn3d(q, k, v, kernel, backend="torch"))
    elif impl == "seg torch fwd+bwd":
        q.requires_grad_(True)
        m = peak_memory_mb(lambda: local_attn3d(q, k, v, kernel, backend="torch").sum().backward())
    else:
        mask = dense_natten_mask(n, kernel)
        qs, ks_, vs = [x.reshape(1, n**3, HEADS, HEAD_DIM).transpose(1, 2) for x in (q, k, v)]
        with torch.no_grad():
            m = peak_memory_mb(lambda: torch.nn.functional.scaled_dot_product_attention(qs, ks_, vs, attn_mask=mask))
        m += mask.numel() * mask.element_size() / 2**20  # the mask is the method's cost too
    print(f"{m:.1f}")


def fresh_mb(impl: str, n: int, kernel: int) -> float | None:
    import subprocess

    r = subprocess.run(
        [sys.executable, __file__, "--fresh", impl, str(n), str(kernel)], capture_output=True, text=True, check=False
    )
    return float(r.stdout.split()[-1]) if r.returncode == 0 and r.stdout.split() else None


def bench_size(n: int, kernel: int, roof: float, flex_on: bool, max_dense_gb: float, max_flex_gb: float) -> list[dict]:
    from seg.ops import local_attn3d

    N = n**3
    q, k, v = [torch.randn(1, n, n, n, HEADS, HEAD_DIM) for _ in range(3)]
    useful = 4 * N * kernel**3 * HEAD_DIM * HEADS / 1e9
    rows = []

    def row(name, fwd, fb=None, mem=None, extra="", rate_roof=roof):
        r = {"n": f"{n}^3", "k": kernel, "impl": name, "fwd": fwd, "fb": fb, "mem": mem, "note": extra}
        r["rate"] = useful / fwd / rate_roof if fwd else None
        rows.append(r)

    # seg torch path; its peak includes building the shape's plan (halo indices and masks, cached after)
    from seg.ops.local_attn3d.torch_impl import _plan as plans

    with torch.no_grad():
        # a shared VM's speed drifts within a run: rate this timing against the sgemm roof measured right
        # before and after it (the higher of the two, the stricter ratio)
        before = sgemm_gflops(reps=2)
        t = timeit(lambda: local_attn3d(q, k, v, kernel, backend="torch"), reps=3)
        near_roof = max(before, sgemm_gflops(reps=2))
        plans.cache_clear()
        m = peak_memory_mb(lambda: local_attn3d(q, k, v, kernel, backend="torch"))
    qg, kg, vg = [x.clone().requires_grad_(True) for x in (q, k, v)]

    def fb():
        local_attn3d(qg, kg, vg, kernel, backend="torch").sum().backward()

    row("seg torch", t, timeit(fb, reps=2), m, f"roof here {near_roof:.0f} GFLOP/s", rate_roof=near_roof)
    rows[-1]["fresh"] = fresh_mb("seg torch", n, kernel)
    rows[-1]["fresh_fb"] = fresh_mb("seg torch fwd+bwd", n, kernel)
    # flex attention, compiled, with a block mask
    # create_block_mask evaluates mask_mod on the N x N grid: eagerly that is ~36 B per pair (6.7 GB at 24^3,
    # out of memory at 32^3); compiled (_compile=True) it works block by block (~0.3 GB at 24^3, but ~17 s)
    flex_gb = 36 * N * N / 1e9
    compile_mask = flex_gb > max_flex_gb
    if flex_on:
        try:
            import time

            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            t0 = time.perf_counter()
            made = {}
            bm_mem = peak_memory_mb(
                lambda: made.update(
                    bm=create_block_mask(natten_mask_fn(n, kernel), 1, HEADS, N, N, device="cpu", _compile=compile_mask)
                )
            )
            t_build = time.perf_counter() - t0
            bm = made["bm"]
            fa = torch.compile(flex_attention)
            qf, kf, vf = [x.reshape(1, N, HEADS, HEAD_DIM).transpose(1, 2).contiguous() for x in (q, k, v)]
            with torch.no_grad():
                t = timeit(lambda: fa(qf, kf, vf, block_mask=bm), reps=2)
                m = peak_memory_mb(lambda: fa(qf, kf, vf, block_mask=bm))
            row(
                "flex_attention (compiled)",
                t,
                None,
                m,
                f"mask build{' (compiled)' if compile_mask else ''} {t_build:.1f} s, {bm_mem:.0f} MB",
            )
        except Exception as e:  # noqa: BLE001
            row("flex_attention (compiled)", None, None, None, f"failed: {type(e).__name__}: {str(e)[:60]}")
    # dense SDPA with a boolean mask, where it fits
    dense_gb = N * N * (1 + 4 * HEADS) / 1e9
    if dense_gb <= max_dense_gb:
        mask = dense_natten_mask(n, kernel)
        qs, ks_, vs = [x.reshape(1, N, HEADS, HEAD_DIM).transpose(1, 2) for x in (q, k, v)]
        f = torch.nn.functional.scaled_dot_product_attention
        with torch.no_grad():
            t = timeit(lambda: f(qs, ks_, vs, attn_mask=mask), reps=1)
            m = peak_memory_mb(lambda: f(qs, ks_, vs, attn_mask=mask))
        row("dense SDPA + bool mask", t, None, m)
        del mask
        rows[-1]["fresh"] = fresh_mb("dense", n, kernel)
    else:
        row("dense SDPA + bool mask", None, None, None, f"skipped: ~{dense_gb:.0f} GB")
    if n <= 24:
        with torch.no_grad():
            t = timeit(lambda: local_attn3d(q, k, v, kernel, backend="reference"), reps=1)
            m = peak_memory_mb(lambda: local_attn3d(q, k, v, kernel, backend="reference"))
        row("naive reference", t, None, m)
    base = next((r["fwd"] for r in rows if r["impl"].startswith("flex") and r["fwd"]), None)
    dense = next((r.get("fresh") for r in rows if r["impl"].startswith("dense")), None)
    for r in rows:
        r["fresh_x"] = r["fresh"] / dense if dense and r.get("fresh") else None
        r["x"] = r["fwd"] / base if base and r["fwd"] else None
        r["fb_x"] = r["fb"] / r["fwd"] if r["fb"] and r["fwd"] else None
    return rows


def gpu_section(sizes, kernel):
    """triton vs flex_attention (compiled, block mask) vs dense SDPA with a boolean mask, bf16, on CUDA."""
    import triton.testing
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from seg.ops import local_attn3d

    print(f"\nGPU {torch.cuda.get_device_name()} (triton.testing.do_bench, ms, bf16, kernel {kernel}):")
    fa = torch.compile(flex_attention)
    for n in sizes:
        N = n**3
        q, k, v = [torch.randn(1, n, n, n, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
        res = {"triton": triton.testing.do_bench(lambda: local_attn3d(q, k, v, kernel, backend="triton"))}
        qf, kf, vf = [x.reshape(1, N, HEADS, HEAD_DIM).transpose(1, 2).contiguous() for x in (q, k, v)]
        bm = create_block_mask(natten_mask_fn(n, kernel, "cuda"), 1, HEADS, N, N, device="cuda")
        res["flex"] = triton.testing.do_bench(lambda: fa(qf, kf, vf, block_mask=bm))
        if N * N * 3 / 1e9 < 0.5 * torch.cuda.get_device_properties(0).total_memory / 1e9:
            mask = dense_natten_mask(n, kernel, "cuda")
            sdpa = torch.nn.functional.scaled_dot_product_attention
            res["dense SDPA"] = triton.testing.do_bench(lambda: sdpa(qf, kf, vf, attn_mask=mask))
        print(f"  {n}^3: " + ", ".join(f"{name} {t:.3f} ms ({t / res['flex']:.2f}x flex)" for name, t in res.items()))


def large_logits_section(sizes, kernel: int) -> None:
    """The CPU path's forward+backward at ordinary logits (PyTorch's fused flash backward, the baseline) against
    logits of 1e4 (the exact per-line backward, which recomputes its softmax: seg.ops.local_attn3d.torch_impl),
    and the exact backward forced at ordinary logits, timed alternately in this process: what accuracy at large
    logits costs, and that ordinary training does not pay it."""
    from seg.ops import local_attn3d
    from seg.ops.local_attn3d import torch_impl

    def fb(scale: float, exact: bool):
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, n, n, n, HEADS, HEAD_DIM, requires_grad=True) for _ in range(3))
        saved = torch_impl.EXACT_ABOVE
        torch_impl.EXACT_ABOVE = -1.0 if exact else saved

        def run():
            out = local_attn3d((q * scale), k, v, kernel, backend="torch")
            out.backward(torch.ones_like(out))

        try:
            return timeit(run, reps=3)
        finally:
            torch_impl.EXACT_ABOVE = saved

    print(f"\nlarge logits, CPU path, k={kernel}: fwd+bwd s (best of 3), ratio to the fused backward at scale 1")
    print(f"{'volume':>7s} {'fused, x1 (base)':>17s} {'exact, x1':>10s} {'exact, x1e4':>12s} {'x base':>7s}")
    for n in sizes:
        base, forced, large = fb(1.0, False), fb(1.0, True), fb(1e4, False)
        print(f"{n:>7d} {base:17.3f} {forced:10.3f} {large:12.3f} {large / base:7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 24, 32, 40])
    ap.add_argument("--kernels", type=int, nargs="+", default=[7, 5, 9])
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--max-dense-gb", type=float, default=6.0)
    ap.add_argument(
        "--max-flex-gb",
        type=float,
        default=8.0,
        help="above this estimated eager mask-build memory, build flex's block mask compiled",
    )
    ap.add_argument("--gpu-only", action="store_true", help="only the CUDA section (scripts/gpu_check.sh)")
    ap.add_argument("--large-logits", action="store_true", help="only the CPU backward at large logits")
    ap.add_argument("--fresh", nargs=3, metavar=("IMPL", "N", "K"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.fresh:
        fresh_first_call(a.fresh[0], int(a.fresh[1]), int(a.fresh[2]))
        return
    if a.large_logits:
        large_logits_section(a.sizes, a.kernels[0])
        return
    if a.gpu_only:
        if not torch.cuda.is_available():
            raise SystemExit("error: --gpu-only but no CUDA device is available")
        gpu_section(a.sizes, 7)
        return
    roof = sgemm_gflops()
    rows = []
    for kernel in a.kernels:
        for n in a.sizes:
            if n >= kernel:
                rows += bench_size(n, kernel, roof, not a.no_flex, a.max_dense_gb, a.max_flex_gb)
    print(
        f"\nB=1, heads={HEADS}, head_dim={HEAD_DIM}; {threads_note()}; sgemm roof {roof:.0f} GFLOP/s at the start "
        "(seg's rate uses the roof measured next to its own timing)"
    )
    print_table(
        rows,
        [
            ("n", "volume", "s"),
            ("k", "kernel", "d"),
            ("impl", "implementation", "s"),
            ("fwd", "fwd s", ".3f"),
            ("x", "x flex", ".2f"),
            ("fb", "fwd+bwd s", ".3f"),
            ("fb_x", "fb/fwd", ".2f"),
            ("rate", "useful/roof", ".1%"),
            ("mem", "fwd peak MB", ".0f"),
            ("fresh", "fresh-process MB", ".0f"),
            ("fresh_x", "x dense", ".3f"),
            ("fresh_fb", "fresh fwd+bwd MB", ".0f"),
            ("note", "note", "s"),
        ],
    )
    if torch.cuda.is_available():
        gpu_section(a.sizes, 7)


if __name__ == "__main__":
    main()
