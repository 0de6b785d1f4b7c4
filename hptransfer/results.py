"""The results store: one JSON line per finished trial, append-only.

``<workdir>/results.jsonl`` holds one row per trial: its stable ``trial_id``
(hash of the resolved config), the swept hyperparameters as dotted keys
(``model.width``, ``optimizer.lr``, ...), final and best train/eval losses, the
diverged flag and step, steps, tokens, parameter count, FLOPs, wall time,
device and software versions.  Loss curves go beside it in
``<workdir>/curves/<trial_id>.json``.

Each row is written with one ``write`` of a whole line under an exclusive file
lock, then flushed and fsynced, so workers can share a store and a kill leaves
at worst a torn last line, which ``load`` skips.
"""
from __future__ import annotations

import fcntl
import json
import os
from typing import Iterable

import pandas as pd

RESULTS = "results.jsonl"
CURVES = "curves"


def results_path(workdir: str) -> str:
  return os.path.join(workdir, RESULTS)


def append(workdir: str, rows: Iterable[dict]) -> None:
  line = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
  if not line:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(results_path(workdir), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      f.write(line)
      f.flush()
      os.fsync(f.fileno())
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def read_rows(path: str) -> list[dict]:
  """Every complete row, first occurrence of each trial id; torn lines skipped."""
  if os.path.isdir(path):
    path = results_path(path)
  rows, seen = [], set()
  if not os.path.exists(path):
    return rows
  with open(path) as f:
    for line in f:
      if not line.endswith("\n"):
        break  # a write cut short by a kill
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      tid = row.get("trial_id")
      if tid in seen:
        continue
      seen.add(tid)
      rows.append(row)
  return rows


def finished_ids(workdir: str) -> set[str]:
  return {r["trial_id"] for r in read_rows(workdir)}


def load(workdir: str) -> pd.DataFrame:
  """The store as a DataFrame, one row per trial."""
  return pd.DataFrame(read_rows(workdir))


def write_curve(workdir: str, trial_id: str, curve: dict) -> None:
  d = os.path.join(workdir, CURVES)
  os.makedirs(d, exist_ok=True)
  tmp = os.path.join(d, f".{trial_id}.json.tmp")
  with open(tmp, "w") as f:
    json.dump(curve, f)
  os.replace(tmp, os.path.join(d, f"{trial_id}.json"))


def load_curve(workdir: str, trial_id: str) -> dict:
  with open(os.path.join(workdir, CURVES, f"{trial_id}.json")) as f:
    return json.load(f)
