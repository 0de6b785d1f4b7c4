"""An MLP-Mixer classifying scikit-learn's 8x8 digits (the classification task).

    python -m hptransfer.train --config configs/classifier.py --workdir runs/digits
    python -m hptransfer.describe --config configs/classifier.py --config.model.width=512

The transformer config with the task, the data and the model swapped; every
other section (parameterization, optimizer, train) keeps its keys.
"""
import ml_collections

from configs import transformer


def get_config() -> ml_collections.ConfigDict:
  c = transformer.get_config()
  c.task.name = "classification"

  c.model = ml_collections.ConfigDict()
  c.model.name = "mixer"              # hptransfer/models/mixer.py
  c.model.module = ""                 # or "my_pkg.models:make_model"
  c.model.width = 128                 # channels per patch
  c.model.depth = 2                   # mixer blocks (residual: block_<i>)
  c.model.patch = 2                   # 8x8 images -> 16 patches of 2x2 pixels
  c.model.tokens_hidden = 32          # token-mixing MLP width (fixed across widths)
  c.model.mlp_ratio = 2.0             # channel-mixing MLP hidden = mlp_ratio * width
  c.model.activation = "gelu"         # gelu | relu | silu | tanh
  c.model.norm = "layernorm"          # layernorm | rmsnorm
  c.model.z_loss = 0.0
  c.model.dropout = 0.0               # dropout rate on each branch (0: off)
  c.model.compute_dtype = "float32"

  c.parameterization.base_width = 32
  c.optimizer.name = "adam"
  c.optimizer.lr = 2.0 ** -7

  c.train.steps = 300
  c.train.batch_size = 64
  c.train.eval_every = 300
  c.train.eval_batches = 6            # 6 x 64 >= the 360 validation images
  c.train.checkpoint_every = 100
  c.train.log_every = 25

  c.data.name = "digits"              # scikit-learn's packaged 8x8 digits
  return c
