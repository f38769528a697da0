"""The plan as a file: a Hydra experiment config written from a data structure, each choice with its reason
as a comment, and the table ``seg-plan`` prints.

Written with ruamel.yaml (the YAML library that keeps comments), so every value is quoted as YAML needs
it: a dataset path holding `` #`` or ``: `` stays one string, and ``max_time`` stays a string (PyYAML, which
Hydra reads with, would take an unquoted ``00:00:20:00`` for a sexagesimal integer).
"""

from __future__ import annotations

import datetime
import io
import re
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString as Quoted

from seg.config import UserError, as_max_time, human_duration
from seg.io import check_writable
from seg.plan.planner import Plan
from seg.plan.search import shape_text

BUSY = "other processes kept the CPU busy while it was probed"
DICE_OVER_BATCH = "Dice over the whole batch (nnU-Net's 3D choice): empty patches still count"


def check_outputs(dataset: Path, out: Path, fingerprint: Path) -> None:
    """Before any probe: seg-plan writes no file inside the dataset it reads; ``-o`` replaces only a plan (a
    YAML mapping with ``planned:``); the fingerprint cache is a ``*.fingerprint.json``; both folders take a
    file. One line naming the path, else nothing."""
    import yaml

    ds = dataset.resolve()
    for path, what in ((out, "plan file (-o)"), (fingerprint, "fingerprint cache (--fingerprint)")):
        if path.resolve().is_relative_to(ds):
            raise UserError(f"{path}: {what} inside the dataset folder {ds}: seg-plan writes nothing where it reads")
        check_writable(path.parent, f"folder of the {what}")
    if not fingerprint.name.endswith(".fingerprint.json"):
        raise UserError(f"{fingerprint}: a fingerprint cache is named *.fingerprint.json (seg-plan replaces it)")
    if out.exists():
        try:
            plan = yaml.safe_load(out.read_text())
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            plan = None
        if not (isinstance(plan, dict) and "planned" in plan):
            raise UserError(f"{out}: exists and is not a plan seg-plan wrote: give -o a new file (or remove it)")


def _flow(xs) -> CommentedSeq:
    seq = CommentedSeq(xs)
    seq.fa.set_flow_style()
    return seq


def _map(items: list[tuple[str, object, str | None]]) -> CommentedMap:
    """A mapping from ``(key, value, comment or None)`` rows, in order."""
    m = CommentedMap()
    for key, value, comment in items:
        m[key] = value
        if comment:
            m.yaml_add_eol_comment(comment, key)
    return m


def _plain(v):
    if isinstance(v, list):
        return _flow([_plain(x) for x in v])
    return v


def _task(plan: Plan, name: str | None) -> str:
    return name or "planned_" + re.sub(r"[^0-9a-zA-Z]+", "_", Path(plan.dataset).name).strip("_").lower()


def _data(plan: Plan, root: str) -> CommentedMap:
    r, dc = plan.reasons, plan.data
    norm = CommentedMap((k, _plain(v)) for k, v in dc["normalize"].items())
    norm.fa.set_flow_style()
    whole = plan.whole_volume
    rows: list[tuple[str, object, str | None]] = [
        ("root", Quoted(root), None),
        *(
            [
                ("mode", "resize", f"{plan.net} is made for whole volumes resized to its input (the paper's mode)"),
                ("resize_shape", _flow(dc["resize_shape"]), "the median case at the plan's spacing, as the patch"),
            ]
            if dc.get("mode") == "resize"
            else []
        ),
        ("spacing", _flow(dc["spacing"]), r["spacing"] + (f"; {r['resolution']}" if "resolution" in r else "")),
        ("normalize", norm, r["normalize"]),
        ("patch_size", _flow(dc["patch_size"]), r["patch"]),
        ("batch_size", dc["batch_size"], "nnU-Net's 3D batch" if whole else "loaded cases per step"),
        (
            "num_samples",
            dc["num_samples"],
            "one (whole-volume) patch per loaded case"
            if whole
            else f"patches per loaded case: {plan.batch} patches per step, the batch the probe timed",
        ),
        ("pos_neg", _flow(dc["pos_neg"]), r["sampling"]),
        ("pipeline", dc["pipeline"], r["pipeline"]),
        (
            "num_workers",
            dc["num_workers"],
            "the device pipeline has no worker processes"
            if dc["pipeline"] == "device"
            else "worker processes: the cores this process may use, less the one that trains",
        ),
    ]
    if dc.get("cache") == "disk":
        rows.append(("cache", "disk", "each case pre-processed once, read memory-mapped: no case held in RAM"))
    if "previous_stage" in dc:
        why = "a cascade's first stage: its seg-kfold run folder (seg-kfold plan=FIRST hydra.run.dir=this), every fold"
        rows.append(("previous_stage", dc["previous_stage"], why))
    if plan.folds < 5:
        rows.append(("num_folds", plan.folds, f"{plan.n_cases} cases: one validation case per fold"))
    rows.append(("augment", _map([("flip_axes", _flow(dc["augment"]["flip_axes"]), r["mirror"])]), None))
    return _map(rows)


def _forecast_comment(plan: Plan) -> str:
    """What the forecast rests on: the kept timings of the step (their median and range), or an estimate."""
    each = " per member" if plan.members > 1 else ""
    if not plan.measured:
        return f"estimated{each}"
    n = plan.timings
    if n == 0:  # seg.plan.planner.Planner._calibrate: a neighbour's training probe stands for the step's own
        return f"a forecast{each}: the step modelled from a neighbouring patch's training probe (see net.filters)"
    return (
        f"a forecast{each}: the median of {n} kept timing{'s' if n != 1 else ''} of the step; steps_range their range"
    )


def _trainer(plan: Plan) -> CommentedMap:
    b = plan.budget
    members = f" of each of the {plan.members} members" if plan.members > 1 else ""
    reserve = (
        f"the budget{members}, less the start-up and the final validation that follow it"
        if b.val_s is not None
        else f"the budget{members}"
    )
    rows: list[tuple[str, object, str | None]] = [
        ("accelerator", plan.device, f"planned for {plan.device}"),
        ("devices", plan.devices, plan.reasons.get("devices")),
    ]
    if plan.devices > 1:
        rows.append(("strategy", "ddp", "one process per GPU (DistributedDataParallel)"))
    rows += [
        ("max_time", Quoted(as_max_time(b.max_time_s)), f"{reserve}; the LR follows its fraction"),
        ("max_epochs", 100000, "not the limit: the budget is"),
        (
            "precision",
            plan.precision,
            plan.reasons.get("precision", "fp32: the device has no fast bf16"),
        ),
        (
            "val_check_interval",
            Quoted(as_max_time(b.interval_s)),
            _interval_reason(b),
        ),
        ("check_val_every_n_epoch", 1, None),
        *(
            [
                (
                    "limit_val_batches",
                    b.val_cases,
                    f"a pass validates the first {b.val_cases} of the fold's validation cases: all of them would "
                    f"take more than {b.settings.validation_share:.0%} of the budget (the k-fold's out-of-fold "
                    "evaluation still scores every case)",
                )
            ]
            if b.val_cases
            else []
        ),
    ]
    return _map(rows)


def _interval_reason(b) -> str:
    """The validation interval's reason: a tenth of a member's budget, once a minute where that is longer, or
    spaced by the validation's own cost where a pass is long (``validation_share``)."""
    tenth = b.member_s // 10
    if b.interval_s > b.base_interval_s:
        return (
            f"every {human_duration(b.interval_s)}: stretched so that no validation runs past max_time "
            f"(Lightning starts one whenever the interval has passed)"
        )
    if b.share_interval_s > max(tenth, b.settings.validation_every_min_s):
        return (
            f"a validation pass takes {human_duration(int(b.val_s))}: spaced so that validating takes at most "
            f"{b.settings.validation_share:.0%} of the training"
        )
    if b.interval_s > tenth:
        return f"validation every minute: a tenth of the budget ({human_duration(tenth)}) would validate more often"
    return f"validation every tenth of the budget ({human_duration(b.interval_s)})"


def plan_document(plan: Plan, root_as: str | None = None, name: str | None = None) -> CommentedMap:
    """The plan file's content (without the header comment). ``root_as``: how ``data.root`` is written (default
    the dataset's absolute path); ``name``: ``task_name`` (default ``planned_<dataset>``)."""
    root = root_as or plan.dataset
    r = plan.reasons
    width = [(k, _plain(v), r["width"]) for k, v in plan.width.items()]
    return _map(
        [
            ("defaults", CommentedSeq([{"override /data": "default"}, {"override /model/net": plan.net}]), None),
            ("task_name", _task(plan, name), None),
            (
                "planned",
                _map(
                    [
                        ("dataset", Quoted(root), None),
                        ("device", plan.device, None),
                        ("measured", plan.measured, None),
                        ("busy", plan.busy, BUSY if plan.busy else None),
                        *([("probes", Quoted(plan.memory), None)] if plan.memory else []),
                        ("resolution", plan.resolution, None),
                        ("median_shape", _flow(plan.median_shape), None),
                        ("channels", _flow(list(plan.modalities)), None),
                        ("step_seconds", plan.step_s, None),
                        ("steps_in_budget", plan.steps, _forecast_comment(plan)),
                        ("steps_range", _flow(list(plan.steps_range)), None),
                        ("budget_seconds", plan.budget_s, None),
                    ]
                ),
                "what the planner saw and chose; seg-train reads median_shape and channels: does the plan fit",
            ),
            ("data", _data(plan, root), None),
            (
                "model",
                _map(
                    [
                        ("loss", _map([("batch", True, DICE_OVER_BATCH)]), None),
                        ("net", _map(width), None),
                        ("channels_last", plan.channels_last, r.get("channels_last", "not measured: the default")),
                    ]
                ),
                None,
            ),
            ("ensemble", _map([("members", plan.members, r["members"])]), None),
            ("trainer", _trainer(plan), None),
            (
                "callbacks",
                _map(
                    [
                        (
                            "early_stopping",
                            None,
                            "the budget ends a planned run (and Lightning 2.6's EarlyStopping fails beside a "
                            "time-based val_check_interval: it reads an attribute unset then)",
                        )
                    ]
                ),
                None,
            ),
        ]
    )


def header(plan: Plan, command: str, root_as: str | None = None) -> str:
    root = root_as or plan.dataset
    est = "" if plan.measured else " (ESTIMATE: cost table, the device is not present)"
    return "\n".join(
        [
            "@package _global_",
            f"Generated by seg-plan on {datetime.date.today().isoformat()}; do not edit, re-plan instead:",
            f"  {command}",
            f"{plan.n_cases} cases of {root}, net {plan.net},",
            f"budget {human_duration(plan.budget_s)} on {plan.device}{est}.",
            "Train it: seg-train plan=THIS.yaml (or experiment=NAME when it lives in conf/experiment/);",
            "command-line overrides win over the plan.",
        ]
    )


def plan_yaml(plan: Plan, command: str, root_as: str | None = None, name: str | None = None) -> str:
    """The plan as a Hydra experiment config (``# @package _global_``), every choice with its reason.

    ``root_as``: how ``data.root`` is written (default the dataset's absolute path), e.g.
    ``${paths.root_dir}/../shared/data/hippocampus`` for a plan committed with the project.
    ``name``: the run's ``task_name`` (outputs/<name>/runs/...), by default ``planned_<dataset>``; seg-plan
    passes the plan file's stem, as experiments are named after their file.
    """
    doc = plan_document(plan, root_as, name)
    doc.yaml_set_start_comment(header(plan, command, root_as))
    y = YAML()
    y.width = 4096  # one value, one line: a long path is never folded
    y.indent(mapping=2, sequence=4, offset=2)
    y.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    buf = io.StringIO()
    y.dump(doc, buf)
    return buf.getvalue()


def plan_table(plan: Plan) -> str:
    """A readable summary of the plan and the probes behind it."""
    width = ", ".join(f"{k} {v}" for k, v in plan.width.items())
    rows = [
        ("dataset", f"{plan.dataset} ({plan.n_cases} cases, {'/'.join(plan.modalities)})"),
        ("net", plan.net),
        ("budget", f"{human_duration(plan.budget_s)} on {plan.device}" + ("" if plan.measured else " (estimated)")),
        ("ensemble", plan.reasons["members"]),
        ("spacing (mm)", "x".join(f"{s:g}" for s in plan.spacing) + f" ({plan.resolution} resolution)"),
        *([("resolution", plan.reasons["resolution"])] if "resolution" in plan.reasons else []),
        ("median case (voxels)", shape_text(plan.median_shape)),
        ("normalisation", plan.reasons["normalize"]),
        ("patch", shape_text(plan.patch) + (" (whole volumes)" if plan.whole_volume else "")),
        ("levels / width", f"{plan.levels} / {width}"),
        ("batch", str(plan.batch)),
        (
            "folds",
            f"{plan.folds}" + (f" (one validation case per fold: {plan.n_cases} cases)" if plan.folds < 5 else ""),
        ),
        ("mirroring", plan.reasons["mirror"]),
        ("patch sampling", plan.reasons["sampling"]),
        ("precision", plan.precision + (", channels-last" if plan.channels_last else "")),
        ("data pipeline", f"{plan.data['pipeline']} ({plan.data['num_workers']} workers)"),
        ("step", plan.reasons["width"]),
        *([("WARNING", plan.reasons["short"])] if "short" in plan.reasons else []),
        ("max_time", as_max_time(plan.budget.max_time_s) + (" per member" if plan.members > 1 else "")),
    ]
    w = max(len(k) for k, _ in rows)
    out = [f"{k.ljust(w)}  {v}" for k, v in rows]
    out.append("")
    out.append(
        "probes (bare s/step as logged -> s/step with its data): "
        + "; ".join(
            f"w{p.base} {shape_text(p.patch)} {p.precision}{'' if p.channels_last else ' cf'} "
            f"{p.bare_s:.4f} -> {p.step_s:.3f}"
            for p in plan.probes
        )
    )
    if plan.memory:
        out.append(f"probe memory: {plan.memory}")
    if plan.busy:
        out.append("note: the machine was busy while probing (see the warning above)")
    return "\n".join(out)


FIT_TOLERANCE = 0.25  # data.root=OTHER fits a plan while its median case at the plan's spacing is within 25 %/axis


def check_reuse(doc: dict, path: Path, overrides: list[str]) -> None:
    """``plan=A`` with ``data.root=OTHER`` among the overrides: refused unless OTHER fits A
    (:func:`check_plan_fits`); the plan's own dataset, however written, is not checked."""
    from seg.config import shared_data

    roots = [a.split("=", 1)[1] for a in overrides if "=" in a and a.split("=", 1)[0].lstrip("+~") == "data.root"]
    if not roots:
        return
    planned = str((doc.get("data") or {}).get("root") or "")
    if planned.startswith("${seg_shared:") and planned.endswith("}"):
        planned = shared_data(planned[len("${seg_shared:") : -1])
    other = Path(roots[-1]).expanduser()
    if planned and other.resolve() == Path(planned).expanduser().resolve():
        return
    check_plan_fits(doc, path, str(other))


def check_plan_fits(doc: dict, path: Path, root: str) -> None:
    """``plan=A data.root=B``: B must be data of A's kind: the same channels (where the plan names them) and a
    median case, resampled to the plan's spacing, within :data:`FIT_TOLERANCE` of the plan's on every axis
    (file order, as the planner reads it); else one line that says to plan B. A plan without these records
    (written before 2026-12-06 lacks ``channels``) is checked on what it has."""
    import nibabel as nib
    import numpy as np

    from seg.config import UserError
    from seg.data.datalist import load_dataset

    planned, spacing = doc.get("planned") or {}, (doc.get("data") or {}).get("spacing")
    want = planned.get("median_shape")
    spec = load_dataset(root)
    name = f"{path}: planned for {planned.get('dataset', 'other data')}"
    if planned.get("channels") is not None and list(planned["channels"]) != list(spec.channel_names):
        raise UserError(
            f"{name} (channels {list(planned['channels'])}); data.root={root} has channels "
            f"{list(spec.channel_names)}: plan it (seg-plan {root}) and train that plan"
        )
    if not want or not spacing or not spec.cases:
        return
    extents = []
    for c in spec.cases:
        h = nib.load(c.images[0]).header
        extents.append([n * float(z) for n, z in zip(h.get_data_shape()[:3], h.get_zooms()[:3])])
    got = [round(float(e / float(s))) for e, s in zip(np.median(extents, 0), spacing)]
    if any(abs(g / w - 1) > FIT_TOLERANCE for g, w in zip(got, want)):
        size = shape_text(got)
        raise UserError(
            f"{name} (median case {shape_text(want)}); data.root={root} is other data (median case {size} "
            f"at the plan's spacing, more than {FIT_TOLERANCE:.0%} off): plan it (seg-plan {root}) and train that plan"
        )


def dataset_as(dataset: str) -> str:
    """How the plan names its dataset: resolved when written, never against a later working folder; under the
    project's real-data folder as ``${seg_shared:...}`` (so a plan committed in conf/ holds on any machine); a
    ``${`` in a path is escaped (``\\${``), so that Hydra reads it as text, not an interpolation."""
    from seg.config import shared_data

    path, shared = Path(dataset).resolve(), Path(shared_data()).resolve()
    return (
        "${seg_shared:" + path.relative_to(shared).as_posix() + "}"
        if path.is_relative_to(shared)
        else str(path).replace("${", "\\${")
    )
