"""Config checks shared by every entry point: fail before any work, naming the
field and the fix.

The sections' own checks live with what they configure: each registered
model's ``validate`` (``hptransfer.models``), each optimizer's ``checks``
(``hptransfer.optim``), each task's ``validate`` (``hptransfer.tasks``).
"""
from __future__ import annotations

import os


class ConfigError(ValueError):
  pass


def one_of(value, options, field):
  if value not in options:
    raise ConfigError(f"{field}={value!r} is not one of {', '.join(map(str, options))}; "
                      f"set --config.{field}=<one of them>")


def finite(value, field):
  import math
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ConfigError(f"{field}={value!r} must be a finite number; set --config.{field}=<a number>")


def positive_int(value, field):
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ConfigError(f"{field}={value!r} must be a positive integer")




def _wrap(fn, *args):
  """Run a section's check, reporting its error as a ConfigError."""
  from hptransfer import models, optim, tasks
  try:
    fn(*args)
  except (models.ModelError, optim.OptimizerError, tasks.TaskError) as e:
    raise ConfigError(str(e)) from None


def validate(cfg) -> None:
  from hptransfer import data as data_lib
  from hptransfer import models, optim, tasks
  from hptransfer import parameterization as P
  m, p, o, t, d = cfg.model, cfg.parameterization, cfg.optimizer, cfg.train, cfg.data
  positive_int(m.width, "model.width")
  positive_int(m.depth, "model.depth")
  one_of(m.compute_dtype, tuple(models.DTYPES), "model.compute_dtype")
  factory, where, entry = _resolve_model(m)
  if m.get("matmul_dtype"):
    if m.matmul_dtype != "bfloat16":
      raise ConfigError(f"model.matmul_dtype={m.matmul_dtype!r} is neither '' (matmuls in "
                        f"model.compute_dtype) nor 'bfloat16' (bf16 operands, f32 "
                        f"accumulation); set --config.model.matmul_dtype=bfloat16 or ''")
    if entry is None or entry.name != "transformer":
      raise ConfigError(f"model.matmul_dtype={m.matmul_dtype!r} is implemented for the "
                        f"transformer only; set --config.model.matmul_dtype='' for {where}")
  one_of(p.name, P.names(), "parameterization.name")
  positive_int(p.base_width, "parameterization.base_width")
  positive_int(p.base_depth, "parameterization.base_depth")
  if p.base_width > m.width:
    raise ConfigError(
        f"parameterization.base_width={p.base_width} is larger than model.width="
        f"{m.width}; the base shape is the small proxy you tune on: set "
        f"--config.parameterization.base_width to at most {m.width}")
  if not 0.0 <= float(p.alpha) <= 1.0:
    raise ConfigError(f"parameterization.alpha={p.alpha} must lie in [0, 1] "
                      "(0: muP, 0.5: Depth-muP, 1: CompleteP)")
  positive = ("output_mult", "embed_mult", "embed_lr_mult", "attn_mult") + P.UNIT_KNOBS
  for field in ("init_std", "alpha") + positive:
    if field in p:
      finite(p[field], f"parameterization.{field}")
  if not p.init_std >= 0:
    raise ConfigError(f"parameterization.init_std={p.init_std} must be >= 0")
  for field in positive:
    if field in p and not p[field] > 0:
      raise ConfigError(f"parameterization.{field}={p[field]} must be > 0")
  try:
    P.check_knobs(p.name, P.Knobs.from_config(p))
  except P.ParameterizationError as e:
    raise ConfigError(str(e)) from None
  if "dropout" in m:
    rate = m.dropout
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
      raise ConfigError(f"model.dropout={rate!r} must be a rate in [0, 1) (0 turns dropout "
                        "off); set e.g. --config.model.dropout=0.1")
  if m.get("z_loss", 0.0):
    finite(m.z_loss, "model.z_loss")
    if m.z_loss < 0:
      raise ConfigError(f"model.z_loss={m.z_loss} must be >= 0 (0 turns it off)")
  one_of(o.name, optim.names(), "optimizer.name")
  try:
    P.check_eps_rule(p.get("eps_rule", "none"), optim.get(o.name).has_eps,
                     f"optimizer.name={o.name!r}")
  except P.ParameterizationError as e:
    raise ConfigError(str(e)) from None
  _wrap(optim.validate, o, t.steps if isinstance(t.steps, int) else None)
  for field in ("steps", "batch_size", "eval_every", "eval_batches",
                "checkpoint_every", "log_every"):
    positive_int(t[field], f"train.{field}")
  finite(t.get("divergence_mult", 3.0), "train.divergence_mult")
  if not t.get("divergence_mult", 3.0) > 1.0:
    raise ConfigError(f"train.divergence_mult={t.divergence_mult} must be > 1 (a trial "
                      "whose loss exceeds this multiple of its first loss is frozen)")
  positive_int(d.seq_len, "data.seq_len")
  _wrap(tasks.validate, cfg)
  task_name = tasks.task_name(cfg)
  if entry is not None and task_name not in entry.tasks:
    raise ConfigError(f"model.name={entry.name!r} is a model for task(s) {list(entry.tasks)}, "
                      f"not task.name={task_name!r}; pick a model of that task "
                      f"({', '.join(n for n, e in models.REGISTRY.items() if task_name in e.tasks)})"
                      " or set --config.task.name")
  if entry is not None and entry.validate is not None:
    _wrap(entry.validate, cfg)
  if d.name == "tokens":
    for field in ("train_path", "val_path"):
      path = os.path.expanduser(d.get(field) or "")
      if not os.path.isfile(path):
        raise ConfigError(f"data.{field}={path!r}: no such token file; set "
                          f"--config.data.{field}=/path/to/tokens.bin")
  if task_name == "lm":
    data_lib.vocab_size(d)
  if "mesh" in cfg:
    from hptransfer import sharding
    for axis in sharding.AXES:
      sharding.axis_size(cfg.mesh, axis)
    sharding.tensor_rules(cfg)
  one_of(cfg.wandb.mode, ("disabled", "offline", "online"), "wandb.mode")
  if "mlflow" in cfg and cfg.mlflow.get("tracking_uri"):
    import importlib.util
    if importlib.util.find_spec("mlflow") is None:
      raise ConfigError("mlflow.tracking_uri is set but mlflow is not installed: "
                        "pip install mlflow-skinny, or set --config.mlflow.tracking_uri=''")


def _resolve_model(m):
  from hptransfer import models
  try:
    factory, where, entry = models.resolve(m)
    models.check_factory(factory, where)
  except models.ModelError as e:
    raise ConfigError(str(e)) from None
  return factory, where, entry


# Keys a run may change between a kill and its resume: how long it runs and
# how often it logs, evaluates and saves (wandb.* is logging alone).
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.eval_every",
                     "train.checkpoint_every")


def differing_keys(stored: dict, current: dict, ignore=RESUMABLE_CHANGES) -> list[str]:
  """Dotted keys whose values differ between two config dicts (missing on
  one side counts), leaving out ``ignore``, the logging sections (wandb.*,
  mlflow.*), search.* and mesh.* (a run may resume on another mesh)."""
  from hptransfer.grid import ID_OMITTED_DEFAULTS, flatten
  a, b = flatten(stored), flatten(current)
  # A key added to the config since the run was stored is its default there.
  for k, v in ID_OMITTED_DEFAULTS.items():
    a.setdefault(k, v)
    b.setdefault(k, v)
  keys = sorted(set(a) | set(b))
  return [k for k in keys if k not in ignore
          and not k.startswith(("wandb.", "mlflow.", "search.", "mesh."))
          and a.get(k, "<absent>") != b.get(k, "<absent>")]
