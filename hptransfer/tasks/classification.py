"""Classification of fixed-size examples (images) into ``num_classes``:
softmax cross-entropy, with accuracy as an eval metric.  The default data,
``digits``, ships inside scikit-learn (``hptransfer.data.load_digits``).

A batch is (x [B, ...], y [B]).
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import optax

from hptransfer import data as data_lib
from hptransfer.tasks import TaskError, register


@register("classification")
class Classification:
  examples_per_batch_row = 1

  def __init__(self, cfg):
    self.dcfg = cfg.data

  @staticmethod
  def validate(cfg) -> None:
    from hptransfer.configlib import one_of
    one_of(cfg.data.name, data_lib.IMAGE_DATASETS, "data.name")

  @functools.cached_property
  def dataset(self) -> data_lib.LabelledDataset:
    return data_lib.get_labelled(self.dcfg)

  @property
  def sha256(self) -> str:
    return self.dataset.sha256

  def context(self) -> dict:
    ds = self.dataset
    return {"num_outputs": ds.num_classes, "num_classes": ds.num_classes,
            "input_shape": ds.input_shape}

  def example_input(self, batch: int = 1):
    return jnp.zeros((batch,) + self.dataset.input_shape, jnp.float32)

  def batch(self, seed: int, step: int, batch_size: int, split: str = "train"):
    return self.dataset.batch(seed, step, batch_size, split)

  def inputs(self, batch):
    return batch[0]

  def loss(self, logits_BxC, batch):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, batch[1]).mean()
    return ce, {"ce": ce}

  def eval_metrics(self, logits_BxC, batch):
    return {"loss": self.loss(logits_BxC, batch)[0],
            "accuracy": jnp.mean(jnp.argmax(logits_BxC, -1) == batch[1])}

  def check_output(self, shape: tuple, batch_size: int, where: str) -> None:
    want = (batch_size, self.dataset.num_classes)
    if tuple(shape) != want:
      raise TaskError(
          f"{where}: the model maps examples {(batch_size,) + self.dataset.input_shape} to "
          f"{tuple(shape)}, but task.name='classification' needs logits [batch, "
          f"num_classes] = {want}: size the readout by the factory's num_classes (or "
          "num_outputs) argument and pool over positions, or pick the task the model was "
          "written for (--config.task.name)")
