"""Byte-context MLP: the transformer config with the model swapped.

    python -m hptransfer.train --config configs/mlp.py --workdir runs/mlp
"""
import ml_collections

from configs import transformer


def get_config() -> ml_collections.ConfigDict:
  c = transformer.get_config()
  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"
  c.model.module = ""
  c.model.width = 256                 # hidden units
  c.model.depth = 2                   # hidden layers after the input layer
  c.model.context = 8                 # tokens each position sees
  c.model.activation = "relu"
  c.model.use_bias = True
  c.model.residual = False            # residual hidden layers (depth rules)
  c.model.z_loss = 0.0
  c.model.dropout = 0.0               # dropout rate on hidden units (0: off)
  c.model.compute_dtype = "float32"
  c.parameterization.base_width = 64
  c.data.seq_len = 64
  return c
