"""Shared plumbing for the entry points: config folder, one-line user errors, exit codes."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

from seg.config import UserError

# conf/ sits beside the package in the source tree (editable installs); SEG_CONF_DIR points elsewhere.
CONF_DIR = os.environ.get("SEG_CONF_DIR", str(Path(__file__).resolve().parents[2] / "conf"))


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


def hydra_main(config_name: str):
    """``@hydra.main`` over ``CONF_DIR`` that turns user errors into a clean message and exit 1."""

    def deco(task):
        import hydra

        @functools.wraps(task)
        def wrapped(cfg):
            try:
                return task(cfg)
            except user_errors() as e:
                logging.getLogger("seg").debug("user error", exc_info=True)
                fail(str(e))

        if not Path(CONF_DIR).is_dir():
            raise SystemExit(f"error: config folder {CONF_DIR} not found (set SEG_CONF_DIR)")
        return hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(wrapped)

    return deco
