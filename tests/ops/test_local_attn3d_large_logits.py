"""Gradients of the local-attention op at large logits, against a float64 reference.

q is scaled by 1e2, 1e4 and 1e6 (kernel 3, a 7x6x5 volume, 2 heads): the softmax turns one-hot and a
backward that recomputes its probabilities from scores rounded differently from the forward's loses them.
dv must match float64 to 1e-4 (relative, norm-wise); dq and dk, whose true values vanish as the softmax
saturates, must stay within 10x of the float32 reference backend's own error (+1e-6), on the fast CPU path
and on the Triton path (its interpreter on the CPU).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from seg.ops import local_attn3d
from tests.conftest import REPO

SCALES = (1.0, 1e2, 1e4, 1e6)
DV_TOL, DQK_FACTOR, DQK_FLOOR = 1e-4, 10.0, 1e-6


def _grads(q, k, v, g, backend):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = local_attn3d(q, k, v, 3, backend=backend)
    return torch.autograd.grad(out, (q, k, v), g.to(out.dtype))


def _rel(a, b) -> float:
    return float((a.double() - b).norm() / b.norm().clamp_min(1e-300))


def errors(backend: str, scale: float, seed: int = 0) -> dict[str, tuple[float, float]]:
    """(backend's relative error, float32 reference backend's) of dq, dk, dv against float64."""
    torch.manual_seed(seed)
    q, k, v = (torch.randn(1, 7, 6, 5, 2, 8, dtype=torch.float64) for _ in range(3))
    q = q * scale
    g = torch.randn(1, 7, 6, 5, 2, 8, dtype=torch.float64)
    exact = _grads(q, k, v, g, "reference")
    ref32 = _grads(q.float(), k.float(), v.float(), g.float(), "reference")
    got = _grads(q.float(), k.float(), v.float(), g.float(), backend)
    return {n: (_rel(a, e), _rel(r, e)) for n, a, r, e in zip("qkv", got, ref32, exact)}


def check(errs: dict, where: str) -> None:
    assert errs["v"][0] <= DV_TOL, f"{where} dv {errs['v'][0]:.3g}"
    for n in "qk":
        got, ref = errs[n]
        assert got <= DQK_FACTOR * ref + DQK_FLOOR, f"{where} d{n} {got:.3g} vs float32 reference {ref:.3g}"


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"x{s:g}")
def test_torch_backward_at_large_logits(scale):
    check(errors("torch", scale), f"torch x{scale:g}")


def test_the_switch_to_the_exact_backward_is_pinned():
    from seg.ops.local_attn3d import torch_impl

    assert torch_impl.EXACT_ABOVE == 500.0
    pytest.importorskip("triton")
    import importlib

    assert importlib.import_module("seg.ops.local_attn3d.triton_kernels").EXACT_ABOVE == 500.0


SCRIPT = r"""
import sys
sys.path.insert(0, {tests!r})
from tests.ops.test_local_attn3d_large_logits import SCALES, check, errors
for s in SCALES:
    check(errors("triton", s), f"triton x{{s:g}}")
print("ok")
"""


def test_triton_backward_at_large_logits_under_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(tests=str(REPO))], env=env, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
