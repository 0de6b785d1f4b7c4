"""Width sweep: SP and muP x widths 32-256 x 8 learning rates (Tensor Programs V
Fig. 1 at CPU scale) of the small Transformer on the embedded corpus.

    python -m hptransfer.sweep --config configs/sweeps/width_transformer.py \
        --workdir runs/width_transformer

SP and muP trials of one width share a compiled group (the parameterization only
changes per-leaf multipliers), so this is 4 groups of 16 vmapped trials.
"""
import numpy as np

from configs import transformer
from hptransfer.sweep import product, sweep


def get_config():
  c = transformer.get_config()
  c.model.depth = 2
  c.model.head_dim = 16
  c.parameterization.base_width = 32
  c.optimizer.name = "adam"
  c.optimizer.schedule = "constant"
  c.train.steps = 200
  c.train.batch_size = 8
  c.data.seq_len = 64
  c.train.eval_every = 100
  c.train.eval_batches = 8
  c.train.log_every = 10
  c.train.checkpoint_every = 50
  c.train.divergence_mult = 3.0    # loss > 3x its first value: diverged
  return c


def get_sweep():
  return product(
      sweep("parameterization.name", ["sp", "mup"]),
      sweep("model.width", [32, 64, 128, 256]),
      sweep("optimizer.lr", 2.0 ** np.arange(-11, -3)),   # 2^-11 .. 2^-4
  )
