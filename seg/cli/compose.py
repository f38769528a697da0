"""Composed commands (``seg-train``, ``seg-kfold``): ``@hydra_main`` over the config folder, with the exit-code
rule of :func:`seg.cli.common.command` and ``plan=PLAN.yaml``."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

from seg.cli.args import plan_overrides, register_resolvers, resume_line
from seg.cli.common import HELP_FLAGS, command, report
from seg.cli.explain import explain_composition
from seg.cli.help import quick_help
from seg.config import CONF_DIR, UserError
from seg.errors import ExitCode, Interrupted, SegError
from seg.io import check_run_root, drop_unused_run


def check_composition(config_name: str, argv: list[str]) -> None:
    """Compose the command line's overrides first: a mistyped key or option is seg's one line (exit 2), not
    Hydra's page. Flags (``--help``, ``-m``, ``--cfg``) and ``hydra.`` overrides are Hydra's own."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    if any(a.startswith("-") for a in argv):
        return
    overrides = [a for a in argv if not a.split("=", 1)[0].lstrip("+~").startswith("hydra.")]
    searchpath = [a for a in argv if a.startswith("hydra.searchpath=")]  # plan=: its experiment's folder
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            cfg = compose(config_name, overrides=searchpath + overrides)
    except HydraException as e:
        raise UserError(explain_composition(e, config_name, searchpath + overrides)) from None
    check_run_root(argv, str((cfg.get("paths") or {}).get("log_dir") or "."))


def hydra_main(config_name: str):
    """``@hydra.main`` over ``CONF_DIR`` with the exit-code rule of :func:`command`, taking ``plan=PLAN.yaml``
    (see :func:`plan_overrides`). The task's return value is what Hydra's sweepers optimise."""

    def deco(task):
        import hydra

        @functools.wraps(task)  # Hydra names the job (and its .log) after the task's module
        def wrapped(cfg):
            # a user's error: one line, exit 2, no run folder (Hydra: a traceback, exit 1; SystemExit passes)
            try:
                return task(cfg)
            except Interrupted as e:
                report(e)
                print(resume_line(config_name, args, e), file=sys.stderr)
                raise SystemExit(e.code) from None
            except SegError as e:
                logging.getLogger("seg").debug("user error", exc_info=True)
                report(e)
                drop_unused_run(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
                raise SystemExit(int(getattr(e, "code", ExitCode.REFUSED))) from None

        register_resolvers()
        if not Path(CONF_DIR).is_dir():
            raise SystemExit(f"error: config folder {CONF_DIR} not found (set SEG_CONF_DIR)")
        run = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(wrapped)

        args: list[str] = []

        @functools.wraps(task)
        def entry():
            args[:] = sys.argv[1:]
            sys.argv[1:] = plan_overrides(sys.argv[1:])
            if "--version" in sys.argv[1:]:
                import seg

                print(f"seg-{config_name} {seg.__version__}")
                return 0
            if HELP_FLAGS & set(sys.argv[1:]):
                print(quick_help(config_name, sys.argv[1:]))
                return 0
            check_composition(config_name, sys.argv[1:])
            return run()

        def main() -> int:  # Hydra's main returns None: the exit status is what command() decided
            code = command(entry)()
            if code:
                sys.exit(code)
            return 0

        return main

    return deco
