"""``--help`` of the composed commands (``seg-train``, ``seg-kfold``): :func:`quick_help`."""

from __future__ import annotations

from pathlib import Path

from seg.config import CONF_DIR


def quick_help(config_name: str, argv: list[str]) -> str:
    """``--help`` of a composed command: the header of ``conf/hydra/default.yaml``'s ``help``, the config groups
    and their options, and the config the command line composes. Written here because Hydra's own help
    composes the config again for every option of every group to list them (2.6 s of ``seg-train --help``
    on a 2-core VM, with torch's import); this composes it once. ``--hydra-help`` is still Hydra's."""
    import yaml
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    app = f"seg-{config_name}"
    header = yaml.safe_load((Path(CONF_DIR) / "hydra" / "default.yaml").read_text())["help"]["header"]
    header = header.replace("${hydra.help.app_name}", app).replace("${hydra.job.name}", config_name)
    groups = []
    for d in sorted(p for p in Path(CONF_DIR).rglob("*") if p.is_dir() and p.name != "hydra"):
        options = sorted(f.stem for f in d.glob("*.yaml"))
        if options and "hydra" not in d.relative_to(CONF_DIR).parts:
            groups.append(f"{d.relative_to(CONF_DIR).as_posix()}: {', '.join(options)}")
    overrides = [a for a in argv if not a.startswith("-") and not a.split("=", 1)[0].startswith("hydra.")]
    overrides += [a for a in argv if a.startswith("hydra.searchpath=")]
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name, overrides=overrides)
    body = OmegaConf.to_yaml(cfg)
    return (
        f"{header.rstrip()}\n\n== Groups (group=option) ==\n"
        + "\n".join(groups)
        + (f"\n\n== The composed config (override any key) ==\n{body}")
    )
