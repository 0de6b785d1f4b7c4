"""Orbax checkpoints of a train state (and, for sweep groups, their curves).

One ``CheckpointManager`` per run or group directory; a save is a
``Composite`` of the state (``StandardSave``) and, optionally, a JSON item
(the loss curves so far), so a resumed run continues both.

``restore_latest_good`` walks the saved steps from the newest: a checkpoint
that cannot be restored (damaged, or from other code) is reported and the
previous one tried; with none left the caller starts afresh, and says so.
"""
from __future__ import annotations

import os


def manager(directory: str, keep: int = 2):
  import orbax.checkpoint as ocp
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True))


def save(mngr, step: int, state, curves: dict | None = None) -> None:
  import orbax.checkpoint as ocp
  items = {"state": ocp.args.StandardSave(state)}
  if curves is not None:
    items["curves"] = ocp.args.JsonSave(curves)
  mngr.save(step, args=ocp.args.Composite(**items))


def restore(mngr, abstract_state, step: int | None = None, with_json: bool = False):
  """The saved state (and curves, with ``with_json``) at ``step`` (default:
  the latest), or None when there is none."""
  import orbax.checkpoint as ocp
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if with_json:
    items["curves"] = ocp.args.JsonRestore()
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  return restored if with_json else restored.state


def restore_latest_good(mngr, abstract_state, with_json: bool = False, log=print,
                        what: str = "run"):
  """(restored, step) from the newest checkpoint that restores, or (None, 0).
  Each one that fails is reported through ``log`` with its error and deleted
  (so that the run can save that step again)."""
  bad = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      out = restore(mngr, abstract_state, step, with_json), step
    except Exception as e:   # orbax raises many types for a damaged or foreign checkpoint
      first = str(e).splitlines()[0][:200] if str(e) else ""
      log(f"{what}: the checkpoint at step {step} in {mngr.directory} cannot be restored "
          f"({type(e).__name__}: {first}); trying an earlier one")
      bad.append(step)
      continue
    _delete(mngr, bad)
    if bad:
      log(f"{what}: resumed from the checkpoint at step {step}")
    return out
  _delete(mngr, bad)
  if bad:
    log(f"{what}: no checkpoint could be restored; starting from step 0")
  return None, 0


def _delete(mngr, steps) -> None:
  import shutil
  for step in steps:
    try:
      mngr.delete(step)
    except Exception:   # a directory orbax no longer recognises: remove it by hand
      shutil.rmtree(os.path.join(str(mngr.directory), str(step)), ignore_errors=True)
  if steps:
    mngr.reload()
