"""Shared plumbing for the entry points: one exit-code rule, one-line errors, one log format.

Every command's ``main`` is wrapped by :func:`command` (the composed ones through ``seg.cli.compose``): a
:class:`~seg.errors.SegError` prints as ``error: <line>`` (one line per problem) and exits 2, Ctrl-C exits
130 and SIGTERM 143, each with how to resume (:mod:`seg.errors` has the table).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from collections.abc import Callable

from seg.cli.resume import resume_hint
from seg.config import configure_threads
from seg.errors import ExitCode, Interrupted, SegError, Signals, Terminated, stop_behind

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
HELP_FLAGS = {"-h", "--help"}  # a command asked for its help only: no torch threads to set (2 s of import)


def setup_logging(level: int = logging.INFO) -> None:
    """The one log format of every command (Hydra's job logging uses the same: conf/hydra/default.yaml)."""
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt=DATE_FORMAT, stream=sys.stderr)
    for name in QUIET_LOGGERS:  # libraries narrating their routine work at INFO, or a missing optional GPU codec
        logging.getLogger(name).setLevel(logging.ERROR)


QUIET_LOGGERS = ("highdicom", "monai.data.nvimgcodec_pydicom_plugin", "onnx_ir", "onnxscript", "torch.onnx")


def report(e: BaseException) -> None:
    """The message on stderr, one line per problem: ``error: <line>``, or the line as it is where it is a
    dataset check's ``ERROR <file>: ...`` already."""
    lines = str(e).splitlines() or [type(e).__name__]
    print("\n".join(x if x.startswith(("ERROR ", "WARNING ")) else f"error: {x}" for x in lines), file=sys.stderr)


def _on_sigterm(signum, frame) -> None:
    """The first SIGTERM ends the command; one more while it is answered (worker threads) is only noted."""
    first, Signals.received = Signals.received is None, signum
    if first and not Signals.deferred:  # deferred: training stops at its next batch
        raise Terminated()


def command(fn: Callable[..., int | None]) -> Callable[..., int]:
    """The exit-code rule around a plain command's ``main``: its own return value (0 done, 1 some cases
    failed), 2 for a :class:`SegError`, 130 for Ctrl-C, 143 for SIGTERM, never a traceback for either."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs) -> int:
        previous = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not the main thread: leave signals alone
            previous = None
        try:
            if not (HELP_FLAGS | {"--hydra-help"}) & set(sys.argv[1:]):
                configure_threads()
            code = int(fn(*args, **kwargs) or 0)
            sys.stdout.flush()  # a closed pipe shows here, inside the rule, not at the interpreter's exit
            return code
        except SegError as e:  # an Interrupted carries its own exit code
            report(e)
            return e.code if isinstance(e, Interrupted) else int(ExitCode.REFUSED)
        except BrokenPipeError:  # `seg-... | head` closed the pipe: exit as a tool killed by SIGPIPE, quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return int(ExitCode.BROKEN_PIPE)
        except (KeyboardInterrupt, Terminated, RuntimeError) as e:  # a stop, or one hidden in a lock's RuntimeError
            stop = stop_behind(e)
            if stop is None:
                raise
            ctrl_c = isinstance(stop, KeyboardInterrupt)
            print(f"{'interrupted (Ctrl-C)' if ctrl_c else 'terminated (SIGTERM)'}: {resume_hint(fn)}", file=sys.stderr)
            return int(ExitCode.INTERRUPTED if ctrl_c else ExitCode.TERMINATED)
        finally:
            if previous is not None:  # before clearing: a pending SIGTERM meets a handler that notes it only
                signal.signal(signal.SIGTERM, previous)
            Signals.received = None  # seen and answered: nothing after this command (in-process) inherits it

    return wrapped
