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
