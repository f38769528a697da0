"""Command-line arguments of the composed commands: ``plan=PLAN.yaml`` and the resume line of a stopped run."""

from __future__ import annotations

from pathlib import Path

from seg.config import UserError, check_plan_file
from seg.errors import Interrupted


def plan_overrides(args: list[str]) -> list[str]:
    """``plan=PLAN.yaml`` (a file written by seg-plan) -> Hydra overrides that compose it as an experiment.

    The plan is read as data (:func:`seg.config.check_plan_file`: no key that runs code) and copied, as read,
    as ``experiment/<name>.yaml`` into a private temporary folder (``mkdtemp``: unpredictable, the user's
    only; removed at exit) added to Hydra's search path, so it composes exactly like the experiments in
    ``conf/experiment`` and later command-line overrides win.
    """
    import atexit
    import shutil
    import tempfile

    import yaml

    plans = [a for a in args if a.startswith("plan=")]
    if not plans:
        return list(args)
    if len(plans) > 1 or any(a.split("=", 1)[0].lstrip("+~") == "experiment" for a in args):
        raise UserError("give one plan=PLAN.yaml, and no experiment= beside it (a plan is an experiment)")
    path = Path(plans[0].split("=", 1)[1]).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"{path}: plan file does not exist (write one with seg-plan)")
    text = path.read_text(errors="replace")
    try:
        check_plan_file(yaml.safe_load(text), path)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"{path}: plan file is not valid YAML{at} (write one with seg-plan)") from None
    rest = [a for a in args if not a.startswith("plan=")]
    from seg.plan.planfile import check_reuse

    check_reuse(yaml.safe_load(text), path, rest)
    search = Path(tempfile.mkdtemp(prefix="seg_plan_"))
    atexit.register(shutil.rmtree, search, True)
    name = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in path.stem)
    (search / "experiment").mkdir()
    (search / "experiment" / f"{name}.yaml").write_text(text)
    return [f"hydra.searchpath=[file://{search}]", f"experiment={name}", *rest]


def add_version(p):
    """``--version`` on a command: its name and seg's version (returns the parser)."""
    import seg

    p.add_argument("--version", action="version", version=f"{p.prog} {seg.__version__}")
    return p


def resume_line(config_name: str, args: list[str], e: Interrupted) -> str:
    """How to continue an interrupted run: seg-kfold resumes its folds in the same run folder by itself;
    seg-train starts from the kept ``last.ckpt``, in the same folder."""
    import shlex

    keep = [a for a in args if a.split("=", 1)[0].lstrip("+~") not in ("ckpt_path", "hydra.run.dir", "cv.run_dir")]
    if config_name == "kfold":
        extra = [f"cv.run_dir={e.run_dir and Path(e.run_dir).parent}"]
    elif e.checkpoint:
        extra = [f"ckpt_path={e.checkpoint}", f"hydra.run.dir={e.run_dir}"]
    else:
        return "resume: no epoch was finished: run the same command again"
    return "resume: " + " ".join(shlex.quote(x) for x in [f"seg-{config_name}", *keep, *extra])


def register_resolvers() -> None:
    """The configs' own interpolations: ``${seg_name:VALUE,DEFAULT}`` (an experiment's or a plan's stem, or
    DEFAULT when unset) and ``${seg_shared:NAME}`` (the real data's folder NAME: ``SEG_SHARED_DATA``, else the
    ``../shared/data`` beside the checkout, absolute, whatever the working folder)."""
    from omegaconf import OmegaConf

    from seg.config import shared_data

    def name(value, default):
        return default if value in (None, "", "None", "null") else Path(str(value)).stem

    if not OmegaConf.has_resolver("seg_name"):
        OmegaConf.register_new_resolver("seg_name", name)
    if not OmegaConf.has_resolver("seg_shared"):
        OmegaConf.register_new_resolver("seg_shared", lambda sub="": shared_data(str(sub)))
