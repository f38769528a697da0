"""Hydra's composition errors as seg's one line: the key or option a mistyped override meant."""

from __future__ import annotations


def explain_composition(e: Exception, config_name: str, overrides: list[str]) -> str:
    """Hydra's composition error as seg's one line, with the key or option it meant when one is close:
    ``trainer.max_epoch=3`` -> "no key trainer.max_epoch; did you mean trainer.max_epochs?"."""
    import difflib
    import re

    text = str(e)
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        parent, _, leaf = key.rpartition(".")
        known = _keys_at(config_name, overrides, parent, key)
        close = difflib.get_close_matches(leaf, known, n=1)
        if close:  # the typo it most likely is, and no hint to add it as a new key
            return f"{key}: no such key; did you mean {parent + '.' if parent else ''}{close[0]}?"
        return f"{key}: no such key (+{key}=... adds a new one)"
    m = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if m:
        group, name = m.groups()
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        close = difflib.get_close_matches(name, options, n=1)
        hint = f"; did you mean {close[0]}?" if close else f" (there are: {', '.join(options[:12])})"
        return f"{group}={name}: no such {group} config{hint}"
    return " ".join(text.split())[:300]


def _keys_at(config_name: str, overrides: list[str], parent: str, bad: str) -> list[str]:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from seg.config import CONF_DIR

    # hydra.searchpath stays: a plan= composes as an experiment found there (#41: no suggestion with a plan)
    rest = [
        o
        for o in overrides
        if o.split("=", 1)[0].lstrip("+~") != bad and (not o.startswith("hydra.") or o.startswith("hydra.searchpath="))
    ]
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            cfg = compose(config_name, overrides=rest)
        node = OmegaConf.select(cfg, parent) if parent else cfg
        return [str(k) for k in node.keys()] if node is not None and hasattr(node, "keys") else []
    except Exception:  # the other overrides fail too: no suggestion
        return []
