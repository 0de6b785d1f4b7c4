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


def default_config_path(path: str) -> str:
  """``configs/<x>.py`` as given when it exists here, else the copy installed
  with the package (so the CLIs' defaults work outside the repository)."""
  if os.path.exists(path) or not path.startswith("configs/"):
    return path
  try:
    import configs
  except ImportError:
    return path
  installed = os.path.join(os.path.dirname(configs.__file__), path[len("configs/"):])
  return installed if os.path.exists(installed) else path


def config_flag(default: str = "configs/transformer.py"):
  from ml_collections import config_flags
  return config_flags.DEFINE_config_file("config", default_config_path(default),
                                         "ml_collections config file")


def user_error_types() -> tuple:
  """The errors that mean bad input, each with a message naming the fix."""
  from hptransfer.configlib import ConfigError
  from hptransfer.data import DataError
  from hptransfer.grid import SweepError
  from hptransfer.models import ModelError
  from hptransfer.optim import OptimizerError
  from hptransfer.parameterization import ParameterizationError
  from hptransfer.perf import PerfError
  from hptransfer.step import StepError
  from hptransfer.tasks import TaskError
  return (ConfigError, DataError, SweepError, ModelError, OptimizerError,
          ParameterizationError, PerfError, StepError, TaskError)


@contextlib.contextmanager
def user_errors(extra: tuple = ()):
  """Bad input (config, model, data, parameterization, ...) -> one line on
  stderr, exit 2."""
  try:
    yield
  except user_error_types() + tuple(extra) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


HELP_FLAGS = ("--help", "-h", "-?", "--helpshort")


def help_text(doc: str) -> str:
  """The command's docstring and its own flags (absl's --help hides
  ``--config``, defined in this module, and exits 1)."""
  from absl import flags
  FLAGS = flags.FLAGS
  lines = [doc.strip(), "", "flags:"]
  mods = FLAGS.flags_by_module_dict()
  own = [m for m in mods if m.endswith(("hptransfer/cli.py", "hptransfer.cli"))
         or m == sys.argv[0] or m.endswith(os.path.basename(sys.argv[0] or "-"))
         or m == "__main__"]
  seen = set()
  for m in own:
    for fl in sorted(mods[m], key=lambda f: f.name):
      if fl.name in seen:
        continue
      seen.add(fl.name)
      default = "none" if fl.default is None else fl.default_as_str
      lines.append(f"  --{fl.name}: {fl.help} (default: {default})")
  lines += ["  --config.<dotted.key>=value: override any key of the config file, e.g. "
            "--config.model.width=256", "",
            "Bad input exits 2 with one line naming the field and the fix; "
            "--helpfull lists absl's and JAX's flags too."]
  return "\n".join(lines)


def run_app(main, doc: str) -> None:
  """``absl.app.run(main)``, with ``--help`` printing ``help_text`` and exiting 0."""
  from absl import app
  if any(a in HELP_FLAGS for a in sys.argv[1:]):
    print(help_text(doc))
    sys.exit(0)
  app.run(main)


MULTIHOST_ENV = ("HPTRANSFER_COORDINATOR", "HPTRANSFER_NUM_PROCESSES", "HPTRANSFER_PROCESS_ID")


def init_distributed(argv=None) -> bool:
  """``jax.distributed.initialize()`` when ``--multihost`` is on the command
  line (before absl parses it: JAX must start before any device is touched).

  With no more than that, JAX finds the coordinator and this process's rank
  in the environment of SLURM, Open MPI, Kubernetes or a TPU pod.  Elsewhere
  (several processes on one machine, or your own launcher) set
  ``HPTRANSFER_COORDINATOR=host:port``, ``HPTRANSFER_NUM_PROCESSES`` and
  ``HPTRANSFER_PROCESS_ID``.  On CPU the cross-process collectives are gloo's.
  Returns whether it initialised.
  """
  argv = sys.argv if argv is None else argv
  if not any(a in ("--multihost", "--multihost=true", "--multihost=True") for a in argv):
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  coord, n, pid = (os.environ.get(k) for k in MULTIHOST_ENV)
  if coord:
    if n is None or pid is None:
      print(f"error: HPTRANSFER_COORDINATOR is set, so {MULTIHOST_ENV[1]} and "
            f"{MULTIHOST_ENV[2]} must be too (the process count and this process's rank)",
            file=sys.stderr)
      sys.exit(2)
    jax.distributed.initialize(coordinator_address=coord, num_processes=int(n),
                               process_id=int(pid))
  else:
    jax.distributed.initialize()
  return True
