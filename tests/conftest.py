from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# torch's threads: 2 in a serial run; in scripts/test.sh's parallel one the cores shared out among pytest-xdist's
# workers, and SEG_THREADS carries that share to the commands the tests start (seg.config.configure_threads)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if _WORKERS > 1 and not os.environ.get("SEG_THREADS"):
    from seg.config import available_cores

    os.environ["SEG_THREADS"] = str(max(1, available_cores() // _WORKERS))
torch.set_num_threads(int(os.environ.get("SEG_THREADS") or 2))

from seg.cli.args import register_resolvers  # noqa: E402

register_resolvers()  # the configs' ${seg_shared:...} and ${seg_name:...}, as the commands register them

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEG_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _no_probe_memory(tmp_path, monkeypatch):
    """Every test plans with the probe memory off (each probe measured, as the tests of the probes expect) and
    a private cache folder; the memory's own tests turn it on (``SEG_PROBE_MEMORY=1``)."""
    monkeypatch.setenv("SEG_PROBE_MEMORY", "0")
    monkeypatch.setenv("SEG_CACHE_DIR", str(tmp_path / "seg_cache"))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A tiny synthetic MSD dataset (8 cases, 32^3), shared read-only by the session's tests."""
    from seg.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("synth") / "ds", n=8, seed=3, shape=(32, 32, 32))


@pytest.fixture
def synth_copy(synth_root, tmp_path) -> Path:
    """A private copy of the tiny dataset that a test may damage."""
    dst = tmp_path / "ds"
    shutil.copytree(synth_root, dst)
    return dst


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests need CUDA: skipped (with the reason) where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run scripts/gpu_check.sh on a machine with a GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def shared(sub: str) -> Path:
    p = SHARED_DATA / sub
    if not p.exists():
        pytest.skip(f"real data not present at {p}")
    return p


def compose_train(overrides: list[str], output_dir: Path, config_name: str = "train"):
    """Compose the real conf/<config_name>.yaml with overrides and a test output folder."""
    from hydra import compose, initialize_config_dir

    from seg.config import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name, overrides=[f"paths.output_dir={output_dir}", *overrides])


# a finished tiny run's exit codes: 0, or 3 where it learned nothing and says so (seg.run.learned): seconds of
# training on 32^3 noise sit near the rule's 0.05 line, on either side by machine
DONE = (0, 3)

# overrides that make a pipeline test small: tiny net, tiny patches, no progress bar, no workers
TINY = [
    "model.net.filters=[4,8,16]",
    "data.patch_size=[24,24,24]",
    "data.num_workers=0",
    "data.batch_size=2",
    "data.num_folds=4",
    "~callbacks.rich_progress_bar",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
]


def tiny_cv(root, run, folds: int = 2, epochs: int = 1) -> list[str]:
    """Overrides of a tiny k-fold run on ``root`` into ``run`` (no surface metrics, no worst-case overlays)."""
    return [
        f"data.root={root}",
        *[o for o in TINY if not o.startswith("data.num_folds")],
        f"cv.folds={folds}",
        f"trainer.max_epochs={epochs}",
        f"cv.run_dir={run}",
        "cv.surface_metrics=false",
        "cv.worst_cases=0",
    ]
