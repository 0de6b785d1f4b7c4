import os
import sys
import tempfile

import pytest

# One persistent compilation cache for the session (fresh each session): tests
# that compile the same shapes twice (the determinism tests above all) load
# the second executable instead of compiling it.  Set before jax is imported.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      tempfile.mkdtemp(prefix="hptransfer-test-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def tiny_config(model: str = "transformer", **overrides):
  """A small config on the synthetic task; overrides are dotted keys."""
  from configs import mlp, transformer
  cfg = (transformer if model == "transformer" else mlp).get_config()
  cfg.model.width = 64
  cfg.model.depth = 2
  if model == "transformer":
    cfg.model.head_dim = 16
  cfg.parameterization.base_width = 32
  cfg.data.name = "synthetic"
  cfg.data.vocab_size = 32
  cfg.data.seq_len = 16
  cfg.train.batch_size = 4
  cfg.train.steps = 10
  cfg.train.eval_every = 10
  cfg.train.eval_batches = 2
  cfg.train.checkpoint_every = 5
  cfg.train.log_every = 5
  return set_overrides(cfg, overrides)


def set_overrides(cfg, overrides: dict):
  """``cfg`` with dotted keys set (in place); returns it."""
  for key, value in overrides.items():
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


@pytest.fixture
def make_config():
  return tiny_config
