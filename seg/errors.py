"""The one error base for what a user can get wrong, the one-line formatter, and the exit-code rule.

Bottom layer: imports nothing of seg. Every command follows the same rule (README, "Exit codes"):

====  ==========================================================================================
code  meaning
====  ==========================================================================================
0     all done
1     some cases or folds failed; each is named (the others were done)
2     refused before any work: a bad option, input, bundle or output; one line names it
130   interrupted (Ctrl-C); the line printed says how to resume
143   terminated (SIGTERM: docker stop, SLURM pre-emption, Kubernetes); the line says how to resume
====  ==========================================================================================
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # some cases or folds failed, each named
    REFUSED = 2  # refused before any work
    LEARNED_NOTHING = 3  # a training or k-fold run ended, everything written, but it learned nothing (seg.run.learned)
    INTERRUPTED = 130  # SIGINT (128 + 2)
    BROKEN_PIPE = 141  # the reader of stdout went away (`| head`): SIGPIPE's 128 + 13, quietly
    TERMINATED = 143  # SIGTERM (128 + 15)


class SegError(Exception):
    """Anything a user can get wrong (input, option, bundle, output). ``str(e)`` is one line naming the
    file or option and the problem (several problems: one line each). Commands print it without a
    traceback and exit with :attr:`ExitCode.REFUSED`."""


class UserError(SegError, ValueError):
    """A problem with the user's input or configuration."""


class Interrupted(SegError):
    """The run was stopped by a signal; ``code`` is 130 (SIGINT) or 143 (SIGTERM). ``checkpoint`` is what a
    resumed run starts from (None: nothing to resume from yet), ``run_dir`` the run's folder; the command
    adds how to resume."""

    def __init__(
        self, message: str, code: int = ExitCode.TERMINATED, checkpoint: str | None = None, run_dir: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = int(code)
        self.checkpoint = checkpoint
        self.run_dir = run_dir


class Signals:
    """What the commands' SIGTERM handler saw. While a Lightning ``fit`` runs, the handler only records the
    signal (``deferred``) and training stops at the next batch with its checkpoint intact
    (``seg.lit.callbacks.StopOnSignal``); elsewhere it stops the command at once."""

    received: int | None = None
    deferred: bool = False


class Terminated(BaseException):
    """SIGTERM turned into an exception in the main thread (not an Exception: no ``except Exception`` eats it)."""


def stop_behind(e: BaseException | None) -> BaseException | None:
    """The Ctrl-C (``KeyboardInterrupt``) or SIGTERM (:class:`Terminated`) that ``e`` is or that it hides: a stop
    landing inside the standard library's lock code (a thread pool starting a worker, where
    ``threading.Condition.wait`` takes its lock back) surfaces as ``RuntimeError: release unlocked lock`` with
    the stop as its context. None where there is no stop (Python cuts cycles out of a context chain)."""
    while e is not None and not isinstance(e, (KeyboardInterrupt, Terminated)):
        e = e.__context__
    return e


def one_line(e: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line (white space folded), at most ``limit`` characters: how a library's
    exception is quoted inside one of seg's own one-line messages."""
    return " ".join(f"{type(e).__name__}: {e}".split())[:limit]


def first_line(e: BaseException | str) -> str:
    """The first line of a message (a list of problems prints whole; a refusal's summary is its first)."""
    text = str(e)
    return text.splitlines()[0] if text else ""


class LearnedNothing(SegError):
    """A run that ended and wrote everything but learned nothing: its lines are a warning block, its exit code
    :attr:`ExitCode.LEARNED_NOTHING` (``code``)."""

    code = 3
