"""``seg-docs [PAGE]``: the documentation pages (docs/*.md) and the pinned versions (constraints), printed from
the installed package, so that a wheel's user, who has no checkout, reads what ``--help`` points to.
``seg-docs`` lists the pages; ``seg-docs predict`` prints docs/predict.md; ``seg-docs constraints`` prints
requirements/constraints.txt (``seg-docs constraints > c.txt; pip install -c c.txt ...``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seg.cli.args import add_version


def folders() -> dict[str, Path]:
    """The docs and requirements folders: beside the package in a checkout, inside it in a wheel."""
    here = Path(__file__).resolve().parents[1]
    out = {}
    for name in ("docs", "requirements"):
        out[name] = next((p for p in (here.parent / name, here / name) if p.is_dir()), here / name)
    return out


def main(argv: list[str] | None = None) -> int:
    p = add_version(argparse.ArgumentParser(prog="seg-docs", description=__doc__))
    p.add_argument("page", nargs="?", help="a page (e.g. predict, planning) or 'constraints'; none: the list")
    a = p.parse_args(argv)
    from seg.cli.common import command

    return command(_docs)(a)


def _docs(a: argparse.Namespace) -> int:
    from seg.errors import UserError

    where = folders()
    pages = sorted(f.stem for f in where["docs"].glob("*.md"))
    if a.page is None:
        print("\n".join([*pages, "constraints"]))
        print("next: seg-docs PAGE")
        return 0
    path = where["requirements"] / "constraints.txt" if a.page == "constraints" else where["docs"] / f"{a.page}.md"
    if not path.is_file():
        raise UserError(f"seg-docs {a.page}: no such page (pages: {', '.join(pages)}, constraints)")
    sys.stdout.write(path.read_text())
    return 0


_docs.prog = "seg-docs"

if __name__ == "__main__":
    sys.exit(main())
