"""Validate a composed config before anything is loaded: the keys and value types of the Lightning
``Trainer`` arguments, the datamodule and the LightningModule, read from their signatures (so ``++``
additions are checked too), and seg's own top-level keys. One line per problem, all at once.

Written here because Hydra checks a config's structure against its YAML, not against the signature of
the ``_target_`` it instantiates, so ``trainer.max_epochs=abc`` reached Lightning as a string.
"""

from __future__ import annotations

import collections.abc as cabc
import difflib
import inspect
import types
import typing
from typing import Any

from seg.config import Precision, UserError, parse_duration

TOP = {"seed": (int, type(None)), "ckpt_path": (str, type(None)), "check_data": (bool,), "task_name": (str,)}


def _fits(value: Any, hint: Any) -> bool:
    """Whether a plain config value can be the annotated type (unknown kinds of annotation pass)."""
    if hint is Any or hint is inspect.Parameter.empty or isinstance(hint, (str, typing.ForwardRef)):
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    target = origin or hint
    if target in (list, tuple, cabc.Sequence, cabc.Iterable, cabc.MutableSequence):
        return isinstance(value, (list, tuple))
    if target in (dict, cabc.Mapping, cabc.MutableMapping):
        return isinstance(value, dict)
    return True  # a class seg cannot judge from a plain value (timedelta, Callback, Path, ...)


def _name(hint: Any) -> str:
    """``Optional[int]`` -> ``int or None``; ``Literal['a', 'b']`` -> ``one of ['a', 'b']``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_name(a) for a in typing.get_args(hint)))
    if origin is typing.Literal:
        return f"one of {list(typing.get_args(hint))}"
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_kwargs(fn, values: dict, prefix: str, skip: tuple[str, ...] = ("_target_", "_partial_")) -> list[str]:
    """Problems of ``values`` as keyword arguments of ``fn``: unknown names (with a suggestion) and types."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    names = [n for n in sig.parameters if n != "self"]
    out = []
    for k, v in values.items():
        if k in skip:
            continue
        if k not in sig.parameters:
            if not takes_kwargs:
                close = difflib.get_close_matches(k, names, n=1)
                out.append(
                    f"{prefix}.{k}: not an argument of {fn.__qualname__.split('.')[0]}"
                    + (f"; did you mean {prefix}.{close[0]}?" if close else "")
                )
            continue
        hint = hints.get(k, sig.parameters[k].annotation)
        if not _fits(v, hint):
            out.append(f"{prefix}.{k}={v!r}: expected {_name(hint)}")
    return out


# trainer keys that take seg's vocabulary (translated to Lightning's by seg.run.train.trainer_values)
VOCABULARY = {
    "precision": lambda v: Precision.parse(v, "trainer.precision"),
    "max_time": lambda v: parse_duration(v, "trainer.max_time"),
}


def _vocabulary(values: dict) -> list[str]:
    out = []
    for key, parse in VOCABULARY.items():
        if values.get(key) is not None:
            try:
                parse(values[key])
            except UserError as e:
                out.append(str(e))
    return out


def _device(values: dict) -> list[str]:
    """A GPU asked for on a machine without one: one line (Lightning's is six, from inside instantiation)."""
    import torch

    acc = str(values.get("accelerator") or "auto").lower()
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        return [f"trainer.accelerator={acc}: no CUDA device on this machine (trainer.accelerator=cpu or auto trains)"]
    return []


LEAST = {"batch_size": 1, "num_samples": 1, "num_workers": 0}  # data counts' smallest sensible values


def _counts(values: dict) -> list[str]:
    """Counts of the data section that type-check but cannot train (``data.batch_size=0`` reached the loader)."""
    out = [
        f"data.{k}={values[k]}: give {least} or more"
        for k, least in LEAST.items()
        if isinstance(values.get(k), int) and not isinstance(values.get(k), bool) and values[k] < least
    ]
    patch = values.get("patch_size")
    if isinstance(patch, list) and any(isinstance(x, int) and x < 1 for x in patch):
        out.append(f"data.patch_size={patch}: every axis 1 voxel or more")
    return out


def validate_config(cfg) -> None:
    """Raise one :class:`UserError` listing every problem (one line each), before data is loaded."""
    import pytorch_lightning as pl
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    problems = []
    for key, kinds in TOP.items():
        if key not in cfg:
            continue
        v = cfg.get(key)
        if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
            problems.append(f"{key}={v!r}: expected {' or '.join(k.__name__ for k in kinds)}")
    sections = {"trainer": pl.Trainer.__init__}
    from seg.data.datamodule import SegDataModule
    from seg.lit.module import SegModule

    if cfg.get("data", {}).get("_target_", "").endswith("SegDataModule"):
        sections["data"] = SegDataModule.__init__
    if cfg.get("model", {}).get("_target_", "").endswith("SegModule"):
        sections["model"] = SegModule.__init__
    for name, fn in sections.items():
        try:
            values = OmegaConf.to_container(cfg[name], resolve=True)
        except OmegaConfBaseException as e:
            problems.append(f"{name}: {' '.join(str(e).split())[:200]}")
            continue
        skip = {"model": ("net",), "trainer": tuple(VOCABULARY)}.get(name, ())
        problems += check_kwargs(fn, values, name, skip=("_target_", "_partial_", *skip))
        if name == "trainer":
            problems += _vocabulary(values) + _device(values)
        if name == "data":
            problems += _counts(values)
    if len(problems) == 1:  # one mistake, one line
        raise UserError(problems[0])
    if problems:
        raise UserError("\n".join(problems) + f"\n{len(problems)} config problems: nothing was loaded or trained")
