"""The README and docs/ say what the code does: the exit-code table the commands follow, a README of a tool
(at most 250 lines), links that lead somewhere, no figure left unfilled."""

from __future__ import annotations

import re

from seg.errors import ExitCode
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_the_readme_exit_code_table_is_the_codes_commands_use():
    section = README[README.index("## Exit codes") :]
    rows = dict(re.findall(r"^\| (\d+) \| ([^|]+)\|", section, flags=re.M))
    assert {int(k) for k in rows} == {int(c) for c in ExitCode}
    assert "refused" in rows["2"] and "some cases or folds failed" in rows["1"] and "SIGTERM" in rows["143"]


def test_the_readme_is_a_tools_readme():
    assert len(README.splitlines()) <= 250


def test_links_to_docs_lead_to_files_and_no_placeholder_is_left():
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "{{" not in text, doc
        for target in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)", text):
            path = (doc.parent / target) if doc.parent.name == "docs" else REPO / target
            assert path.is_file(), (doc.name, target)


def test_ci_runs_the_readmes_test_command():
    """README: `.ci/run` runs exactly `bash scripts/test.sh`, which lints (ruff), checks the import layers
    (import-linter) and then runs the default tier."""
    ci = [x for x in (REPO / ".ci" / "run").read_text().splitlines() if x.strip() and not x.startswith("#")]
    assert ci[-1] == "bash scripts/test.sh" and "bash scripts/test.sh" in README
    steps = (REPO / "scripts" / "test.sh").read_text()
    order = [steps.index(s) for s in ('/bin/ruff" check', '/bin/lint-imports"', '-m "not slow and not gpu"')]
    assert order == sorted(order) and "set -euo pipefail" in steps  # each step fails the command


def _one_line(text: str) -> str:
    return " ".join(text.split())


def test_every_readme_promise_in_the_ledger_is_quoted_and_held_by_tests_that_exist():
    """docs/promises.md: each quote is in the README, each test it names exists, and its stated count is the
    table's (a row held by no test starts with "none")."""
    ledger = (REPO / "docs" / "promises.md").read_text()
    rows = re.findall(r'^\| (\d+) \| "(.+)" \| (.+) \|$', ledger, flags=re.M)
    assert [int(n) for n, *_ in rows] == list(range(1, len(rows) + 1))
    readme, tests = _one_line(README), {}
    for path in (REPO / "tests").rglob("test_*.py"):
        tests.setdefault(path.name, set()).update(re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M))
    held = 0
    for n, quote, cell in rows:
        assert _one_line(quote.replace("\\|", "|")) in readme, f"row {n}: not in the README: {quote}"
        for file, name in re.findall(r"(test_\w+\.py)::(test_\w+)", cell):
            assert name in tests.get(file, set()), f"row {n}: no {file}::{name}"
        held += not cell.startswith("none")
        assert cell.startswith("none") or re.search(r"test_\w+\.py::test_\w+", cell), f"row {n}: no test named"
    stated = re.search(r"\*\*(\d+) promises; (\d+) held by tests \((\d+) %\)\.\*\*", ledger)
    assert stated and tuple(map(int, stated.groups())) == (len(rows), held, round(100 * held / len(rows)))
