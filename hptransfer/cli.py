"""Shared start-up of the command-line entry points."""
from __future__ import annotations

import contextlib
import os
import sys

import jax


def quiet_logs() -> None:
  """absl INFO lines (orbax saves, backend probing) off; warnings stay."""
  from absl import logging
  logging.set_verbosity(logging.WARNING)


def enable_compilation_cache(path: str | None = None) -> str:
  """JAX's persistent compilation cache, on by default.

  Location: ``$HPTRANSFER_JAX_CACHE`` or ``~/.cache/hptransfer/jax``; set
  ``HPTRANSFER_JAX_CACHE=off`` to disable.
  """
  path = path or os.environ.get("HPTRANSFER_JAX_CACHE",
                                os.path.expanduser("~/.cache/hptransfer/jax"))
  if path == "off":
    return ""
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def setup() -> None:
  quiet_logs()
  enable_compilation_cache()


def config_flag(default: str = "configs/transformer.py"):
  from ml_collections import config_flags
  return config_flags.DEFINE_config_file("config", default, "ml_collections config file")


@contextlib.contextmanager
def user_errors(extra: tuple = ()):
  """Bad input (config, data, parameterization) -> one line on stderr, exit 2."""
  from hptransfer.configlib import ConfigError
  from hptransfer.data import DataError
  from hptransfer.parameterization import ParameterizationError
  try:
    yield
  except (ConfigError, DataError, ParameterizationError) + tuple(extra) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
