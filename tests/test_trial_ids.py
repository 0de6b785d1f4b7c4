"""Trial ids of the committed result rows are what the code computes today.

A trial id is the hash of its resolved config, so a config key added, renamed
or given another default would silently orphan every published row (and every
half-finished workdir).  These are the rows committed under docs/: each must
be one of the trials its preset expands to.  (docs/reports/width_transformer
holds rows from before model.attention and friends were added; their ids were
orphaned then, and the report is an analysis of rows, which it still is.)
"""
import json
import os

import pytest

from conftest import ROOT

ROWS = {   # committed results.jsonl -> (experiment, preset)
    "docs/experiments/tp5_fig1/gpu/results.jsonl": ("tp5_fig1", "gpu"),
    "docs/experiments/depth_transfer/gpu/results.jsonl": ("depth_transfer", "gpu"),
    "docs/experiments/classification_transfer/results.jsonl": ("classification_transfer", "cpu"),
    "docs/experiments/tp5_fig1/results.jsonl": ("tp5_fig1", "cpu"),
    "docs/experiments/depth_transfer/results.jsonl": ("depth_transfer", "cpu"),
    "docs/experiments/horizon/results.jsonl": ("horizon", "cpu"),
    "docs/experiments/other_hps/results.jsonl": ("other_hps", "cpu"),
}


class _Stop(Exception):
  pass


def _preset_trial_ids(monkeypatch, name, preset):
  import importlib
  from experiments import common
  from hptransfer import grid
  mod = importlib.import_module(f"experiments.{name}")
  ids = set()

  def capture(base_cfg, overrides, workdir, progress=True, **kw):
    ids.update(t.id for t in grid.expand(base_cfg, overrides))
    raise _Stop

  monkeypatch.setattr(common, "run_sweep", capture)
  try:
    mod.run(preset, "unused", "unused", progress=False)
  except _Stop:
    pass
  return ids


@pytest.mark.parametrize("path", sorted(ROWS))
def test_committed_rows_keep_their_trial_ids(monkeypatch, path):
  with open(os.path.join(ROOT, path)) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  ids = _preset_trial_ids(monkeypatch, *ROWS[path])
  assert rows and {r["trial_id"] for r in rows} <= ids
