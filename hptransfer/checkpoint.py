"""Orbax checkpoints of a train state (and, for sweep groups, their curves).

One ``CheckpointManager`` per run or group directory; a save is a
``Composite`` of the state (``StandardSave``) and, optionally, a JSON item
(the loss curves so far), so a resumed run continues both.
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
