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


@pytest.mark.slow
def test_analyze_only_uses_the_rows_there_and_says_partial(tmp_path, monkeypatch):
  """--analyze_only trains nothing; with rows missing, the note says how many."""
  from experiments import common, tp5_fig1
  work = tmp_path / "work"
  tp5_fig1.run("tiny", str(work), str(tmp_path / "full"), progress=False)
  results = work / "results.jsonl"
  rows = results.read_text().splitlines()
  keep = [r for r in rows if json.loads(r)["model.width"] != max(
      json.loads(x)["model.width"] for x in rows)]
  results.write_text("\n".join(keep) + "\n")
  monkeypatch.setattr(common, "ANALYZE_ONLY", True)
  monkeypatch.setattr(common, "_ROWS", {})
  res = tp5_fig1.run("tiny", str(work), str(tmp_path / "part"), progress=False)
  assert len(results.read_text().splitlines()) == len(keep)     # nothing was trained
  note = (tmp_path / "part" / "tp5_fig1.md").read_text()
  assert f"use {len(keep)} of the preset's {len(rows)} trials" in note
  assert res["machine"]["partial"] == f"{len(keep)} of the preset's {len(rows)} trials"
  widths = {k for g in res["groups"].values() for k in g["per_scale"]}
  assert str(max(json.loads(x)["model.width"] for x in rows)) not in widths
