"""What a run optimises: its batches, the model's inputs, the loss and the
eval metrics.  A task is a class registered by name (``task.name`` in the
config); adding one is one module in this package.

A task gives

- ``context()``: keyword arguments offered to the model factory
  (``num_outputs``, and e.g. ``vocab_size``/``seq_len`` or ``num_classes``);
- ``example_input(batch)``: what the model is called on;
- ``batch(seed, step, batch_size, split)``: a pure function of its arguments;
- ``inputs(batch)`` and ``loss(outputs, batch)`` -> (mean loss, metrics), and
  ``eval_metrics(outputs, batch)`` -> {"loss": ..., ...};
- ``check_output(shape, batch_size)``: the model's output shape is what the
  loss needs, or a ``TaskError`` naming the fix (checked before any work);
- ``examples_per_batch_row``: the number of predictions one row of a batch
  makes (sequence length for language modelling, 1 for classification):
  rows count ``tokens = steps * batch_size * examples_per_batch_row``.
"""
from __future__ import annotations

import importlib
import pkgutil


class TaskError(ValueError):
  """A task that does not fit its config or its model; the message says the fix."""


REGISTRY: dict[str, type] = {}


def register(name: str):
  def deco(cls):
    cls.name = name
    REGISTRY[name] = cls
    return cls
  return deco


def names() -> tuple[str, ...]:
  return tuple(sorted(REGISTRY))


def task_name(cfg) -> str:
  return cfg.get("task", {}).get("name", "lm") if "task" in cfg else "lm"


def get(cfg):
  """The task of a config (``task.name``, default ``lm``)."""
  name = task_name(cfg)
  if name not in REGISTRY:
    raise TaskError(f"task.name={name!r} is not one of {', '.join(names())}; set "
                    "--config.task.name=<one of them>")
  return REGISTRY[name](cfg)


def validate(cfg) -> None:
  name = task_name(cfg)
  if name not in REGISTRY:
    raise TaskError(f"task.name={name!r} is not one of {', '.join(names())}; set "
                    "--config.task.name=<one of them>")
  REGISTRY[name].validate(cfg)


for _m in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_m.name}")
