"""The results store: one JSON line per finished trial, append-only.

``<workdir>/results.jsonl`` holds one row per trial: its stable ``trial_id``
(hash of the resolved config), the swept hyperparameters as dotted keys
(``model.width``, ``optimizer.lr``, ...), final and best train/eval losses, the
diverged flag and step, steps, tokens, parameter count, FLOPs, wall time,
device and software versions.  Loss curves go beside it in
``<workdir>/curves/<trial_id>.json``.

Rows are strict JSON: a non-finite number is written as ``null`` and its key
listed in the row's ``nonfinite`` field (``{"final_train_loss": "nan"}``), so
every JSON reader can load the store.

Each append is one ``write`` of whole lines under an exclusive file lock, then
flushed and fsynced, and starts on a fresh line (a kill can leave a torn last
line; the next append does not glue its row onto it).  ``read_rows`` skips,
and reports, every line that is not a complete trial row; so workers can
share a store, and a damaged line loses only itself.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import sys
from typing import Iterable

import pandas as pd

RESULTS = "results.jsonl"
CURVES = "curves"


def results_path(workdir: str) -> str:
  return os.path.join(workdir, RESULTS)


def _finite(v, key: str, bad: dict):
  if isinstance(v, float) and not math.isfinite(v):
    bad[key] = repr(v)
    return None
  if isinstance(v, dict):
    return {k: _finite(x, f"{key}.{k}" if key else k, bad) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_finite(x, f"{key}[{i}]", bad) for i, x in enumerate(v)]
  return v


def strict(row: dict) -> dict:
  """The row with non-finite numbers as None, listed under ``nonfinite``."""
  bad: dict = {}
  out = {k: _finite(v, k, bad) for k, v in row.items()}
  if bad:
    out["nonfinite"] = {**row.get("nonfinite", {}), **bad}
  return out


def dumps(obj) -> str:
  """Strict JSON of ``obj`` (non-finite numbers as null)."""
  return json.dumps(_finite(obj, "", {}), sort_keys=True, allow_nan=False)


def append(workdir: str, rows: Iterable[dict]) -> None:
  line = "".join(json.dumps(strict(r), sort_keys=True, allow_nan=False) + "\n" for r in rows)
  if not line:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(results_path(workdir), "a+b") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      f.seek(0, os.SEEK_END)
      if f.tell() > 0:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":      # a torn last line: start on a fresh one
          f.write(b"\n")
      f.write(line.encode())
      f.flush()
      os.fsync(f.fileno())
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def read_rows(path: str, report=None) -> list[dict]:
  """Every complete row, first occurrence of each trial id.  A line that is
  not a complete JSON object with a ``trial_id`` (a write cut short by a
  kill, a damaged line) is skipped and reported on stderr (or to ``report``)."""
  if os.path.isdir(path):
    path = results_path(path)
  rows, seen, skipped = [], set(), []
  if not os.path.exists(path):
    return rows
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        row = None
      if not isinstance(row, dict) or "trial_id" not in row:
        skipped.append(n)
        continue
      tid = row["trial_id"]
      if tid in seen:
        continue
      seen.add(tid)
      rows.append(row)
  if skipped:
    msg = (f"{path}: skipped {len(skipped)} line(s) that are not complete trial rows "
           f"(line {', '.join(map(str, skipped[:5]))}{', ...' if len(skipped) > 5 else ''}); "
           "their trials will be run again")
    (report or (lambda m: print(m, file=sys.stderr)))(msg)
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
    f.write(dumps(curve))
  os.replace(tmp, os.path.join(d, f"{trial_id}.json"))


def load_curve(workdir: str, trial_id: str) -> dict:
  with open(os.path.join(workdir, CURVES, f"{trial_id}.json")) as f:
    return json.load(f)
