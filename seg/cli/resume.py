"""What a stopped plain command says about resuming (Ctrl-C, SIGTERM): :func:`resume_hint`, per command."""

from __future__ import annotations

from collections.abc import Callable

RESUME = {
    "seg-predict": "outputs written so far are complete; run the same command with --continue to do the rest",
    "seg-eval": "nothing was written; run the same command again",
    "seg-plan": "nothing was written; run the same command again",
    "seg-export": "the bundle is unchanged; run the same command again",
    "seg-check-data": "nothing was written; run the same command again",
    "seg-synth": "run the same command with --overwrite",
}


def resume_hint(fn: Callable) -> str:
    prog = getattr(fn, "prog", None) or fn.__module__.rsplit(".", 1)[-1]
    return RESUME.get(prog, RESUME.get(f"seg-{prog.replace('_', '-')}", "run the same command again"))
