"""Every reproduction's tiny preset runs end to end and is deterministic."""
import importlib
import json
import os

import pytest

EXPERIMENTS = ["tp5_fig1", "coord_check_fig", "depth_transfer", "other_hps", "horizon",
               "mutransfer_demo"]


def _strip(obj):
  """Drop what legitimately differs between two runs: timings and the machine."""
  if isinstance(obj, dict):
    return {k: _strip(v) for k, v in obj.items()
            if not k.endswith("wall_s") and k != "machine"}
  if isinstance(obj, list):
    return [_strip(v) for v in obj]
  return obj


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_tiny_preset_is_deterministic(name, tmp_path):
  mod = importlib.import_module(f"experiments.{name}")
  outs = []
  for run in ("a", "b"):
    out = tmp_path / f"{run}_out"
    mod.run("tiny", str(tmp_path / run), str(out), progress=False)
    path = out / f"{mod.NAME}.json"
    outs.append(json.loads(path.read_text()))
    assert (out / f"{mod.NAME}.md").stat().st_size > 200
    assert any(f.endswith(".png") for f in os.listdir(out))
  assert _strip(outs[0]) == _strip(outs[1])
