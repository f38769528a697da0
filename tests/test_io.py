"""seg.io's writes: atomic, and readable as the umask says (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat

import pytest

from seg.io import current_umask, write_text


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left beside it


def test_failed_write_leaves_nothing(tmp_path):
    from seg.io import atomic_write_bytes

    def boom(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_bytes(tmp_path / "b.bin", boom)
    assert list(tmp_path.iterdir()) == []


def test_a_refused_runs_folder_goes_and_a_used_one_stays(tmp_path, monkeypatch):
    """#41: refused runs left run folders. A run folder holding only Hydra's files goes, with the empty folders
    above it inside the working folder; one with anything else stays, and so does the working folder."""
    from seg.io import drop_unused_run

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "outputs" / "train" / "runs" / "r1"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("a: 1")
    (run / "train.log").write_text("error: ...")
    drop_unused_run(run)
    assert not (tmp_path / "outputs").exists() and tmp_path.is_dir()
    (run / ".hydra").mkdir(parents=True)
    (run / "train.log").write_text("")
    (run.parent / "r0").mkdir()  # an earlier run beside it
    drop_unused_run(run)
    assert not run.exists() and (run.parent / "r0").is_dir()
    (run / "checkpoints").mkdir(parents=True)
    (run / "train.log").write_text("")
    drop_unused_run(run)
    assert (run / "checkpoints").is_dir() and (run / "train.log").exists()
