"""What a user reads: seg's one line for a mistyped key or option, a help that leads with plan= and
experiment=, quiet logs in one format with heartbeat lines off a terminal, and each command's next one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DONE, REPO, TINY

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _run(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=timeout)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("trainer.max_epoch=3", "trainer.max_epoch: no such key; did you mean trainer.max_epochs?"),
        ("data.augment.flip_prb=0.1", "data.augment.flip_prb: no such key; did you mean data.augment.flip_prob?"),
        ("experiment=hipocampus_unet", "experiment=hipocampus_unet: no such experiment config; did you mean "
         "hippocampus_unet?"),
        ("model/net=unett", "model/net=unett: no such model/net config; did you mean unet?"),
        ("trainer.qqqqqq=1", "trainer.qqqqqq: no such key (+trainer.qqqqqq=... adds a new one)"),
    ],
)  # fmt: skip
def test_a_mistyped_key_or_option_is_one_line_with_a_suggestion(tmp_path, override, needle):
    r = _run("seg.cli.train", override, f"hydra.run.dir={tmp_path / 'r'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: {needle}", r.stderr[-1500:]  # the suggestion, and no hint to add the typo
    assert not (tmp_path / "r").exists()


def test_help_leads_with_plan_and_experiment():
    r = _run("seg.cli.train", "--help")
    head = r.stdout.splitlines()[:6]
    assert r.returncode == 0 and head[0].startswith("seg-train:")
    assert any("plan=PLAN.yaml" in x for x in head) and any("experiment=NAME" in x for x in head)
    assert r.stdout.index("plan=PLAN.yaml") < r.stdout.index("== The composed config")
    groups = r.stdout[r.stdout.index("== Groups") : r.stdout.index("== The composed config")]
    assert "model/net: agunet, daunet" in groups and "experiment: hippocampus_agunet" in groups
    assert "hydra" not in groups and "\ntrainer:" in r.stdout  # the composed config, hydra's own keys left out


def test_help_into_a_closed_pipe_exits_141_without_a_traceback():
    """`seg-train --help | head -0`: the reader is gone before the help is written."""
    p = subprocess.Popen(
        [sys.executable, "-m", "seg.cli.train", "--help"],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err[-1500:]


def test_a_piped_run_logs_one_format_heartbeats_and_no_bar_or_banner(synth_root, tmp_path, monkeypatch):
    """Off a terminal: no progress-bar frames, no Lightning banner, a heartbeat line inside a long epoch, the
    epoch line as `epoch N (elapsed of max_time)`, one log format, and the next command last. No hydra.run.dir:
    the run goes to the README's default folder, outputs/<task>/runs/<date_time>/ under the project (SEG_ROOT)."""
    monkeypatch.setitem(ENV, "SEG_HEARTBEAT_S", "1")
    monkeypatch.setitem(ENV, "SEG_CONSOLE_EVERY_S", "0")  # every progress line on the console (throttle tested apart)
    monkeypatch.setitem(ENV, "SEG_ROOT", str(tmp_path))
    args = [f"data.root={synth_root}", *[o for o in TINY if "rich" not in o], "trainer.max_time=8s"]
    r = _run("seg.cli.train", *args, "trainer.max_epochs=100000")
    assert r.returncode in DONE, r.stderr[-2000:]  # 3: an 8-s run may learn nothing, and says so
    runs = list((tmp_path / "outputs").glob("*/runs/*"))
    assert [p.parent.parent.name for p in runs] == ["train"], runs  # task_name: train
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", runs[0].name), runs[0].name
    assert {"train.log", "config.yaml", "metrics.json", "model"} <= {p.name for p in runs[0].iterdir()}
    run = runs[0]
    text = r.stdout + r.stderr
    for noise in ("GPU available", "TPU available", "Seed set to", "━", "\r", "Tip:"):
        assert noise not in text, noise
    log = (run / "train.log").read_text()
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING) [\w.]+: "
    assert all(re.match(stamp, line) for line in log.splitlines() if line.strip()), log[:500]
    assert re.search(r"seg.epoch: epoch \d+ \(0:00:\d\d of 0:00:08\) train/loss", log)
    assert re.search(r"seg.epoch: step \d+, epoch \d+ \(0:00:\d\d of 0:00:08\)", text), text[-3000:]  # heartbeat
    assert r.stdout.strip().splitlines()[-1] == f"next: seg-predict -m {run / 'model'} -i INPUT -o OUTPUT"


def test_kfold_with_an_experiment_gives_no_false_no_plan_warning(caplog):
    """seg-kfold sets task_name: kfold whatever the experiment; the warning reads Hydra's recorded choice."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from seg.config import CONF_DIR
    from seg.run.train import warn_without_plan

    def composed(overrides):
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            cfg = compose("kfold", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # as in a real run: the choices Hydra recorded
        return cfg

    try:
        cfg = composed(["experiment=hippocampus_unet", "data.root=/somewhere/else"])
        assert cfg.task_name == "kfold"  # what the old check read: it cannot tell an experiment
        warn_without_plan(cfg)
        assert not any("seg-plan" in r.getMessage() for r in caplog.records)
        warn_without_plan(composed(["data=default", "data.root=/somewhere/else"]))
        assert sum("seg-plan" in r.getMessage() for r in caplog.records) == 1
    finally:
        HydraConfig.instance().cfg = None


def test_budget_text_says_seconds_not_a_rounded_minute():
    from seg.config import human_duration

    assert human_duration(90) == "1 min 30 s" and human_duration(3600) == "1 h" and human_duration(45) == "45 s"


VERSIONED = ["seg.cli.train", "seg.cli.kfold", "seg.cli.plan", "seg.cli.predict", "seg.cli.eval", "seg.cli.export",
             "seg.cli.synth", "seg.cli.check_data"]  # fmt: skip


@pytest.mark.parametrize("module", VERSIONED)
def test_every_command_says_its_version(module):
    import seg

    r = _run(module, "--version", timeout=120)
    name = "seg-" + module.rsplit(".", 1)[1].replace("_", "-")
    assert r.returncode == 0 and r.stdout.strip() == f"{name} {seg.__version__}", (r.stdout, r.stderr[-500:])


def test_a_mistyped_key_beside_a_plan_gets_its_suggestion_too(tmp_path):
    """#41: `seg-train plan=P trainer.max_tme=1m` answered "no such key (+... adds a new one)": the suggestion
    composed the config without the plan's search path, failed, and gave up. In process: the composition check."""
    from seg.cli.args import plan_overrides
    from seg.cli.compose import check_composition
    from seg.config import CONF_DIR, UserError

    plan = tmp_path / "my_plan.yaml"  # a name conf/experiment does not hold
    plan.write_text((Path(CONF_DIR) / "experiment" / "hippocampus_planned.yaml").read_text())
    with pytest.raises(UserError) as e:
        check_composition("train", plan_overrides([f"plan={plan}", "trainer.max_tme=1m", f"hydra.run.dir={tmp_path}"]))
    assert str(e.value) == "trainer.max_tme: no such key; did you mean trainer.max_time?"


def test_seg_train_and_kfold_quiet_the_same_loggers_as_the_other_commands():
    """#41: seg-train and seg-kfold (Hydra's job logging) printed monai's "nvImageCodec is not available" warning
    on every run that the other commands (seg.cli.common.setup_logging) keep quiet."""
    import logging
    import logging.config

    import yaml

    from seg.cli.common import QUIET_LOGGERS
    from seg.config import CONF_DIR

    job = yaml.safe_load((Path(CONF_DIR) / "hydra" / "default.yaml").read_text())["job_logging"]
    assert {k: v["level"] for k, v in job["loggers"].items()} == dict.fromkeys(QUIET_LOGGERS, "ERROR")
    before = {n: logging.getLogger(n).level for n in QUIET_LOGGERS}
    try:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False, "loggers": job["loggers"]})
        assert all(logging.getLogger(n).getEffectiveLevel() == logging.ERROR for n in QUIET_LOGGERS)
    finally:
        for n, level in before.items():
            logging.getLogger(n).setLevel(level)
