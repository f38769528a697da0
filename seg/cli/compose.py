"""Composed commands (``seg-train``, ``seg-kfold``): ``@hydra_main`` over the config folder, with the exit-code
rule of :func:`seg.cli.common.command` and ``plan=PLAN.yaml``."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

from seg.cli.common import command, report
from seg.config import CONF_DIR, UserError
from seg.errors import ExitCode, Interrupted, SegError


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
    """``@hydra.main`` over ``CONF_DIR`` with the exit-code rule of :func:`command`, taking ``plan=PLAN.yaml``
    (see :func:`plan_overrides`). The task's return value is what Hydra's sweepers optimise."""

    def deco(task):
        import hydra

        @functools.wraps(task)  # Hydra names the job (and its .log) after the task's module
        def wrapped(cfg):
            # Hydra reports an Exception from the task with a traceback and exit 1: a user's error leaves as
            # one line and exit 2 (SystemExit passes through Hydra untouched)
            try:
                return task(cfg)
            except Interrupted as e:
                report(e)
                raise SystemExit(e.code) from None
            except SegError as e:
                logging.getLogger("seg").debug("user error", exc_info=True)
                report(e)
                raise SystemExit(int(ExitCode.REFUSED)) from None

        _register_resolvers()
        if not Path(CONF_DIR).is_dir():
            raise SystemExit(f"error: config folder {CONF_DIR} not found (set SEG_CONF_DIR)")
        run = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(wrapped)

        @functools.wraps(task)
        def entry():
            sys.argv[1:] = plan_overrides(sys.argv[1:])
            return run()

        def main() -> int:  # Hydra's main returns None: the exit status is what command() decided
            code = command(entry)()
            if code:
                sys.exit(code)
            return 0

        return main

    return deco
