"""Small helpers every layer shares: plain containers from configs, string-enum options, user errors.

Bottom layer (beside ``seg.io``): imports nothing of seg, nor Lightning or Hydra.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from seg.errors import UserError

__all__ = [
    "CONF_DIR",
    "Precision",
    "UserError",
    "as_max_time",
    "available_cores",
    "check_option",
    "configure_threads",
    "human_duration",
    "parse_duration",
    "to_plain",
]

E = TypeVar("E", bound=Enum)


def _conf_dir() -> str:
    """The Hydra config folder: ``SEG_CONF_DIR``; else ``conf/`` beside the package in a checkout (editable
    installs: edits take effect); else the copy a wheel installs as package data (``seg/conf``)."""
    if os.environ.get("SEG_CONF_DIR"):
        return os.environ["SEG_CONF_DIR"]
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    return str(here / "conf")


CONF_DIR = _conf_dir()


PLAN_KEYS = ("defaults", "task_name", "planned", "data", "model", "ensemble", "trainer", "callbacks", "cv", "seed")
HYDRA_CALL_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")


def check_plan_file(plan: Any, path: Path) -> None:
    """A plan file is data: a mapping of the keys seg-plan writes (:data:`PLAN_KEYS`), no Hydra call key
    (``_target_`` ... : a plan names registered configs, never code), ``defaults`` entries that override a config
    group with one of seg's own configs, and ``callbacks`` entries that only turn a callback off (null).
    One line naming the file and the key, else nothing."""
    if not isinstance(plan, dict):
        raise UserError(f"{path}: not a plan (a YAML mapping written by seg-plan)")
    unknown = sorted(str(k) for k in plan if k not in PLAN_KEYS)
    if unknown:
        raise UserError(f"{path}: {', '.join(unknown)}: not a key of a plan (a plan sets {', '.join(PLAN_KEYS)})")

    def walk(node: Any, where: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            at = f"{where}.{k}" if where else str(k)
            if k in HYDRA_CALL_KEYS:
                raise UserError(f"{path}: {at}: a plan file names no code to run (plans use seg's registered configs)")
            walk(v, at)

    walk(plan, "")
    for entry in plan.get("defaults") or []:
        group, name = next(iter(entry.items())) if isinstance(entry, dict) and len(entry) == 1 else (None, None)
        group = str(group).removeprefix("override ").strip("/ ") if group else ""
        plain = re.fullmatch(r"[\w-]+(/[\w-]+)*", group) and re.fullmatch(r"[\w-]+", str(name))
        if entry != "_self_" and not (plain and (Path(CONF_DIR) / group / f"{name}.yaml").is_file()):
            raise UserError(f"{path}: defaults entry {entry!r} is not one of seg's configs (conf/GROUP/NAME.yaml)")
    for name, value in (plan.get("callbacks") or {}).items():
        if value is not None:
            raise UserError(f"{path}: callbacks.{name}: a plan may only turn a callback off (null)")


def shared_data(name: str = "") -> str:
    """Where the project's real data lie: ``SEG_SHARED_DATA``, else ``../shared/data`` beside a checkout
    (an absolute path, whatever the working folder; the committed experiments resolve theirs with it)."""
    root = os.environ.get("SEG_SHARED_DATA") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    return str(Path(root) / name) if name else root


def to_plain(x: Any) -> Any:
    """DictConfig/ListConfig or nested mappings -> plain dict/list (safe for weights-only checkpoints)."""
    if isinstance(x, Mapping):
        return {str(k): to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)) or type(x).__name__ == "ListConfig":
        return [to_plain(v) for v in x]
    if isinstance(x, Enum):
        return x.value
    return x


def check_option(name: str, value: Any, choices: type[E]) -> str:
    """The value of the member of the string enum ``choices`` that ``value`` names, else a one-line
    :class:`UserError` (a ValueError).

    MONAI's ``look_up_option`` does the look-up and the "did you mean" suggestion; its message spans three
    lines, so it is folded into one that also names the option.

    Args:
        name: the option's name, used in the message (e.g. ``"model.net.attention_gate"``).
        value: the given value (a string or a member).
        choices: a ``(str, Enum)`` class.
    """
    for member in choices:  # a valid value costs no import (seg.ops calls this on every op call)
        if value is member or value == member.value:
            return member.value
    # MONAI (~130 MB of modules) only for the message: not at the top, where every --help imports seg.config,
    # and not above, where a first local_attn3d call would import it
    from monai.utils import look_up_option

    try:
        return look_up_option(value, choices, print_all_options=False).value
    except ValueError as e:
        hint = re.search(r"did you mean '([^']+)'", str(e))
        allowed = sorted(m.value for m in choices)
        raise UserError(
            f"{name}={value!r} is not one of {allowed}" + (f"; did you mean {hint.group(1)!r}?" if hint else "")
        ) from None


class Precision(str, Enum):
    """The one precision vocabulary: ``fp32`` or ``bf16`` (autocast), on every command and in every config.
    Lightning's own spellings (``32-true``, ``bf16-mixed``, ...) are accepted where a trainer is configured."""

    FP32 = "fp32"
    BF16 = "bf16"

    @property
    def lightning(self) -> str:
        """Lightning's ``Trainer(precision=...)`` value."""
        return "bf16-mixed" if self is Precision.BF16 else "32-true"

    @classmethod
    def parse(cls, value: Any, name: str = "precision") -> Precision:
        """``fp32``/``bf16`` or a Lightning spelling of either (``32``, ``32-true``, ``bf16-mixed``, ...)."""
        text = str(value).strip().lower()
        if text in ("fp32", "32", "32-true", "float32"):
            return cls.FP32
        if text in ("bf16", "bf16-mixed", "bf16-true", "bfloat16"):
            return cls.BF16
        raise UserError(f"{name}={value!r}: give fp32 or bf16")


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls and convolutions run natively (oneDNN), faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def bf16_supported(device: str) -> bool:
    """Whether ``device`` has fast bf16 (the planner probes bf16 only there; seg-predict's ``auto`` uses it
    only there)."""
    import torch

    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([hms])")


def parse_duration(text: Any, name: str = "--budget") -> int:
    """``20m``, ``1h``, ``1h30m``, ``90s``, ``45`` (minutes) or ``DD:HH:MM:SS`` -> whole seconds (> 0).

    The one duration vocabulary: ``seg-plan --budget`` and ``trainer.max_time`` take the same forms.
    """
    t = str(text).strip().lower()
    if re.fullmatch(r"\d+:\d+:\d+:\d+", t):
        d, h, m, s = (int(x) for x in t.split(":"))
        secs = float(((d * 24 + h) * 60 + m) * 60 + s)
    elif re.fullmatch(r"\d+(\.\d+)?", t):
        secs = float(t) * 60
    else:
        parts = _DURATION.findall(t)
        if not parts or "".join(f"{a}{b}" for a, b in parts) != t.replace(" ", ""):
            raise UserError(f"{name} {text!r}: give e.g. 20m, 1h, 1h30m, 90s or DD:HH:MM:SS")
        secs = sum(float(a) * {"h": 3600, "m": 60, "s": 1}[b] for a, b in parts)
    if secs < 1:
        raise UserError(f"{name} {text!r} must be positive: at least 1 second")
    return int(secs)


def as_max_time(seconds: int) -> str:
    """Seconds -> Lightning's ``DD:HH:MM:SS``."""
    d, rem = divmod(int(seconds), 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{d:02d}:{h:02d}:{m:02d}:{s:02d}"


def human_duration(seconds: float) -> str:
    """``90`` -> ``1 min 30 s``, ``3600`` -> ``1 h``, ``45`` -> ``45 s``: how a budget is printed."""
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    parts = [f"{h} h"] * bool(h) + [f"{m} min"] * bool(m) + [f"{sec} s"] * bool(sec)
    return " ".join(parts) or "0 s"


def available_cores() -> int:
    """The CPU cores this process may use: its affinity set (``taskset``, SLURM, Kubernetes cpusets), capped by
    a cgroup v2 CPU quota (``docker run --cpus``), which the affinity set does not show."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(-(-int(quota) // int(period)))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def configure_threads() -> int:
    """torch's intra-op threads: ``SEG_THREADS`` when set, else :func:`available_cores` (torch alone counts every
    core of the machine, and oversubscribes a container or a shared node). Returns the count."""
    import torch

    env = os.environ.get("SEG_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise UserError(f"SEG_THREADS={env!r}: give a positive number of threads")
        n = int(env)
    else:
        n = available_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def finite_number(x: Any) -> bool:
    """A real, finite number from a file a user can edit (a plan, a bundle, the probe memory): not a bool, text,
    NaN or infinity."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@contextlib.contextmanager
def pool(workers: int, kind: type[Executor] = ThreadPoolExecutor) -> Iterator[Executor]:
    """An executor (threads by default) that does not outlive a stop: when its block ends by an exception, a
    signal's included (SIGTERM 143, Ctrl-C 130), the tasks not yet started are dropped and nothing waits for
    the running ones. The standard ``with Executor()`` waits for every queued task first: a ``docker stop`` of
    a batch whose inputs were queued for checking read them all before it exited (or was killed)."""
    ex = kind(max(1, workers))
    try:
        yield ex
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


def progress_bar(description: str, total: int):
    """A started rich progress bar on stderr (``description``, bar, done/total, time left) and its one task:
    ``(bar, task)``; ``bar.advance(task)`` per item, ``bar.stop()`` at the end."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    bar = Progress(*columns, console=Console(stderr=True))
    task = bar.add_task(description, total=total)
    bar.start()
    return bar, task
