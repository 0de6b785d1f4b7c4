"""Lion across width: training loss against log2 LR, SP against muP.

    python experiments/lion_transfer.py --preset cpu     # 2 cores
    python experiments/lion_transfer.py --preset gpu

Lion's updates are signs, one size per coordinate as Adam's are, so it takes
Adam's muP rules (hptransfer/optim/lion.py); what it needs of its own is an
LR range: its paper (Chen et al. 2023) uses an LR 3-10x below AdamW's and
b2 = 0.99.  So the presets are tp5_fig1's with the LR grid moved down one
octave (a first run two octaves down found muP's optimum at the top of its
grid) and ``optimizer.b2=0.99``; this experiment measures where Lion's
optimum sits against Adam's and whether muP holds it across width.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common  # noqa: E402
from experiments import muon_transfer  # noqa: E402
from experiments import tp5_fig1  # noqa: E402

NAME = "lion_transfer"
PRESETS = {k: {**v, "lrs": v["lrs"] / 2} for k, v in tp5_fig1.PRESETS.items()}
OVERRIDES = {"optimizer.name": "lion", "optimizer.b2": 0.99}
ABOUT = """Lion (sign updates, b1 0.9, b2 0.99) on every leaf, under Adam's
width rules."""
EXPECTED = """Expected: Lion's update, like Adam's, is one size per coordinate, so
under SP its optimum should fall about as Adam's does (tp5_fig1), and muP's
Adam rules should hold it; its optimum should sit 3-10x below Adam's."""


def run(preset: str, workdir: str, out: str, progress: bool = True) -> dict:
  return muon_transfer.width_transfer(
      NAME, PRESETS[preset], preset, workdir, out, progress, OVERRIDES,
      "Lion on the byte corpus: final train loss against learning rate per width", "Lion",
      ABOUT, EXPECTED)


if __name__ == "__main__":
  a = common.parse(NAME, PRESETS)
  common.print_width_verdict(run(a.preset, a.workdir, a.out), a.out)
