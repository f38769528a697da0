"""``seg-train``: train one model from a composed Hydra config (``conf/train.yaml``).

The runner is :func:`seg.run.train.train`; this is its thin Hydra wrapper.
"""

from __future__ import annotations

import sys

from seg.cli.common import hydra_main


@hydra_main("train")
def main(cfg) -> None:
    from seg.run.train import train

    train(cfg)


if __name__ == "__main__":
    sys.exit(main())
