"""The Triton kernels against the reference, on the CPU under TRITON_INTERPRET=1 (small cases: the
interpreter is slow). Run in a subprocess so the interpreter flag is set before triton is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytest.importorskip("triton")

SCRIPT = r"""
import os, sys, torch
assert os.environ["TRITON_INTERPRET"] == "1"
from seg.ops import local_attn3d
# poison fresh allocations: a tile a kernel forgot to write shows up as NaN
_empty_like, _empty = torch.empty_like, torch.empty
torch.empty_like = lambda *a, **kw: _empty_like(*a, **kw).fill_(float("nan"))
torch.empty = lambda *a, **kw: _empty(*a, **kw).fill_(float("nan"))
torch.manual_seed(0)
cases = [((1, 5, 6, 9, 2, 16), 3, 1), ((2, 7, 5, 6, 1, 32), (5, 3, 3), 1), ((1, 6, 5, 7, 1, 16), 3, (2, 1, 2)),
         ((1, 4, 5, 3, 1, 24), (3, 5, 3), 1),
         # the largest head dims the kernels take (tiny volumes: the interpreter is slow)
         ((1, 3, 4, 5, 1, 64), 3, 1), ((1, 4, 3, 3, 1, 128), 3, 1)]
for shape, ks, dil in cases:
    q, k, v = [torch.randn(*shape, requires_grad=True) for _ in range(3)]
    ref = local_attn3d(q, k, v, ks, dil, backend="reference")
    out = local_attn3d(q, k, v, ks, dil, backend="triton")
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    g = torch.randn_like(ref)
    for name, a, b in zip("qkv", torch.autograd.grad(ref, (q, k, v), g), torch.autograd.grad(out, (q, k, v), g)):
        torch.testing.assert_close(b, a, atol=5e-5, rtol=5e-5, msg=lambda m: f"{shape} d{name}: {m}")
q, k, v = [torch.randn(1, 5, 6, 7, 2, 16).half() for _ in range(3)]
out = local_attn3d(q, k, v, 3, backend="triton")
assert out.dtype == torch.float16
ref = local_attn3d(q.float(), k.float(), v.float(), 3, backend="reference")
torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
q, k, v = [torch.randn(1, 4, 6, 5, 2, 32, dtype=torch.bfloat16) for _ in range(3)]
out = local_attn3d(q, k, v, 3, backend="triton")
assert out.dtype == torch.bfloat16
ref = local_attn3d(q.float(), k.float(), v.float(), 3, backend="reference")
torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)
print("ok", len(cases))
"""


def test_triton_kernels_match_reference_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "ok 6" in r.stdout
