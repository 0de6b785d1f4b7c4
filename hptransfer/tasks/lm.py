"""Next-token language modelling on a token stream (``hptransfer.data``: the
embedded byte corpus, token files, a synthetic Markov chain).

A batch is [B, T + 1] token ids; the model sees [:, :-1] and predicts [:, 1:].
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import optax

from hptransfer import data as data_lib
from hptransfer.tasks import TaskError, register


@register("lm")
class LanguageModelling:
  examples_per_batch_row: int

  def __init__(self, cfg):
    self.dcfg = cfg.data
    self.seq_len = int(cfg.data.seq_len)
    self.vocab_size = data_lib.vocab_size(cfg.data)
    self.examples_per_batch_row = self.seq_len

  @staticmethod
  def validate(cfg) -> None:
    from hptransfer.configlib import one_of
    one_of(cfg.data.name, data_lib.DATASETS, "data.name")
    data_lib.vocab_size(cfg.data)

  @functools.cached_property
  def dataset(self) -> data_lib.Dataset:
    ds = data_lib.get_dataset(self.dcfg)
    if ds.vocab_size != self.vocab_size:
      raise data_lib.DataError("data.vocab_size disagrees with the dataset")
    data_lib.check_length(ds, self.seq_len)
    return ds

  @property
  def sha256(self) -> str:
    return self.dataset.sha256

  def context(self) -> dict:
    return {"num_outputs": self.vocab_size, "vocab_size": self.vocab_size,
            "seq_len": self.seq_len}

  def example_input(self, batch: int = 1):
    return jnp.zeros((batch, self.seq_len), jnp.int32)

  def batch(self, seed: int, step: int, batch_size: int, split: str = "train"):
    return self.dataset.batch(seed, step, batch_size, self.seq_len, split)

  def inputs(self, batch_BxT1):
    return batch_BxT1[:, :-1]

  def loss(self, logits_BxTxV, batch_BxT1):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, batch_BxT1[:, 1:]).mean()
    return ce, {"ce": ce}

  def eval_metrics(self, logits_BxTxV, batch_BxT1):
    return {"loss": self.loss(logits_BxTxV, batch_BxT1)[0]}

  def check_output(self, shape: tuple, batch_size: int, where: str) -> None:
    want = (batch_size, self.seq_len, self.vocab_size)
    if tuple(shape) != want:
      raise TaskError(
          f"{where}: the model maps tokens [batch, seq_len] = {(batch_size, self.seq_len)} to "
          f"{tuple(shape)}, but task.name='lm' needs logits [batch, seq_len, vocab_size] = "
          f"{want}: size the readout by the factory's vocab_size (or num_outputs) argument, "
          "or pick the task the model was written for (--config.task.name)")
