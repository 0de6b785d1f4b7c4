"""File locks shared by processes that share a work directory.

fcntl locks: every process on one host, or a shared filesystem whose locks
work.  A lock is released when its holder exits, however it exits, so a
killed worker never leaves a group or a trial locked.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Any


@contextlib.contextmanager
def file_lock(path: str, blocking: bool = True):
  """An exclusive lock on ``path``: yields True once held, or False at once
  when ``blocking`` is off and another process holds it."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
      yield False
      return
    try:
      yield True
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


class HeldLocks:
  """Non-blocking exclusive locks on named things, held until released."""

  def __init__(self, directory: str, prefix: str):
    self.dir, self.prefix = directory, prefix
    self.held: dict[str, Any] = {}

  def try_lock(self, name: str) -> bool:
    os.makedirs(self.dir, exist_ok=True)
    f = open(os.path.join(self.dir, f"{self.prefix}{name}.lock"), "a")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.close()
      return False
    self.held[name] = f
    return True

  def release(self, name: str) -> None:
    f = self.held.pop(name, None)
    if f is not None:
      fcntl.flock(f, fcntl.LOCK_UN)
      f.close()
