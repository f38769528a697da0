"""Shared plumbing for the entry points: config folder, one-line user errors, exit codes."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

from seg.config import CONF_DIR, UserError


def fail(msg: str, code: int = 1) -> None:
    print(f"error: {msg}" if "\n" not in msg else msg, file=sys.stderr)
    sys.exit(code)


def user_errors():
    """Exception types reported as one line (plus the list) instead of a traceback."""
    from seg.data.datalist import DatasetError
    from seg.data.splits import SplitError
    from seg.inference.bundle import BundleError
    from seg.io import NiftiError

    return (UserError, DatasetError, SplitError, NiftiError, BundleError, FileNotFoundError)


def plan_overrides(args: list[str]) -> list[str]:
    """``plan=PLAN.yaml`` (a file written by seg-plan) -> Hydra overrides that compose it as an experiment.

    The plan is linked as ``experiment/<name>.yaml`` into a folder added to Hydra's search path, so it
    composes exactly like the experiments in ``conf/experiment`` and later command-line overrides win.
    """
    import tempfile

    plans = [a for a in args if a.startswith("plan=")]
    if not plans:
        return list(args)
    if len(plans) > 1 or any(a.split("=", 1)[0].lstrip("+~") == "experiment" for a in args):
        raise UserError("give one plan=PLAN.yaml, and no experiment= beside it (a plan is an experiment)")
    path = Path(plans[0].split("=", 1)[1]).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"{path}: plan file does not exist (write one with seg-plan)")
    search = Path(tempfile.mkdtemp(prefix="seg_plan_"))
    (search / "experiment").mkdir()
    name = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in path.stem)
    (search / "experiment" / f"{name}.yaml").symlink_to(path)
    rest = [a for a in args if not a.startswith("plan=")]
    return [f"hydra.searchpath=[file://{search}]", f"experiment={name}", *rest]


def _register_resolvers() -> None:
    """``${seg_name:VALUE,DEFAULT}``: VALUE (an experiment's name, a plan's stem) or DEFAULT when unset."""
    from omegaconf import OmegaConf

    def name(value, default):
        return default if value in (None, "", "None", "null") else Path(str(value)).stem

    if not OmegaConf.has_resolver("seg_name"):
        OmegaConf.register_new_resolver("seg_name", name)


def hydra_main(config_name: str):
    """``@hydra.main`` over ``CONF_DIR`` that turns user errors into a clean message and exit 1, and takes
    ``plan=PLAN.yaml`` (see :func:`plan_overrides`)."""

    def deco(task):
        import hydra

        @functools.wraps(task)
        def wrapped(cfg):
            try:
                return task(cfg)
            except user_errors() as e:
                logging.getLogger("seg").debug("user error", exc_info=True)
                fail(str(e))

        _register_resolvers()
        if not Path(CONF_DIR).is_dir():
            raise SystemExit(f"error: config folder {CONF_DIR} not found (set SEG_CONF_DIR)")
        run = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(wrapped)

        @functools.wraps(task)
        def entry():
            try:
                sys.argv[1:] = plan_overrides(sys.argv[1:])
            except UserError as e:
                fail(str(e))
            return run()

        return entry

    return deco
