"""Config checks shared by every entry point: fail before any work, naming the
field and the fix."""
from __future__ import annotations

import os

from hptransfer import data as data_lib
from hptransfer import parameterization as P
from hptransfer.models import DTYPES, MODELS
from hptransfer.models.transformer import ACTIVATIONS
from hptransfer.optim import SCHEDULES
WD_MODES = ("coupled", "independent")


class ConfigError(ValueError):
  pass


def _one_of(value, options, field):
  if value not in options:
    raise ConfigError(f"{field}={value!r} is not one of {', '.join(map(str, options))}; "
                      f"set --config.{field}=<one of them>")


def _positive_int(value, field):
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ConfigError(f"{field}={value!r} must be a positive integer")


def validate(cfg) -> None:
  m, p, o, t, d = cfg.model, cfg.parameterization, cfg.optimizer, cfg.train, cfg.data
  _one_of(m.name, MODELS, "model.name")
  _positive_int(m.width, "model.width")
  _positive_int(m.depth, "model.depth")
  _one_of(m.activation, tuple(ACTIVATIONS), "model.activation")
  _one_of(m.compute_dtype, tuple(DTYPES), "model.compute_dtype")
  if m.get("matmul_dtype"):
    if m.matmul_dtype != "bfloat16":
      raise ConfigError(f"model.matmul_dtype={m.matmul_dtype!r} is neither '' (matmuls in "
                        f"model.compute_dtype) nor 'bfloat16' (bf16 operands, f32 "
                        f"accumulation); set --config.model.matmul_dtype=bfloat16 or ''")
    if m.name != "transformer":
      raise ConfigError(f"model.matmul_dtype={m.matmul_dtype!r} is implemented for the "
                        f"transformer only; set --config.model.matmul_dtype='' for "
                        f"model.name={m.name!r}")
  _one_of(p.name, P.PARAMETERIZATIONS, "parameterization.name")
  _positive_int(p.base_width, "parameterization.base_width")
  _positive_int(p.base_depth, "parameterization.base_depth")
  if p.base_width > m.width:
    raise ConfigError(
        f"parameterization.base_width={p.base_width} is larger than model.width="
        f"{m.width}; the base shape is the small proxy you tune on: set "
        f"--config.parameterization.base_width to at most {m.width}")
  if not 0.0 <= float(p.alpha) <= 1.0:
    raise ConfigError(f"parameterization.alpha={p.alpha} must lie in [0, 1] "
                      "(0: muP, 0.5: Depth-muP, 1: CompleteP)")
  if p.init_std < 0:
    raise ConfigError(f"parameterization.init_std={p.init_std} must be >= 0")
  if m.name == "transformer":
    _one_of(m.norm, ("rmsnorm", "layernorm"), "model.norm")
    _positive_int(m.head_dim, "model.head_dim")
    attention = m.get("attention", "auto")
    _one_of(attention, ("auto", "xla", "blocked", "cudnn"), "model.attention")
    if attention in ("auto", "blocked"):
      _positive_int(m.get("attention_block", 64), "model.attention_block")
    if attention == "cudnn" and m.compute_dtype == "float32":
      raise ConfigError("model.attention='cudnn' needs a 16-bit compute dtype: set "
                        "--config.model.compute_dtype=bfloat16 or model.attention='xla'")
    for field, w in (("model.width", m.width),
                     ("parameterization.base_width", p.base_width)):
      if w % m.head_dim:
        raise ConfigError(
            f"{field}={w} is not divisible by model.head_dim={m.head_dim}; "
            "heads are width // head_dim: pick a multiple of the head dim")
  _one_of(o.name, tuple(P.OPTIMIZER_FAMILY), "optimizer.name")
  if not o.lr > 0:
    raise ConfigError(f"optimizer.lr={o.lr} must be > 0")
  if o.weight_decay < 0:
    raise ConfigError(f"optimizer.weight_decay={o.weight_decay} must be >= 0")
  if o.name == "adam" and o.weight_decay:
    raise ConfigError("optimizer.weight_decay is set with optimizer.name='adam'; "
                      "use --config.optimizer.name=adamw for decoupled decay")
  _one_of(o.weight_decay_mode, WD_MODES, "optimizer.weight_decay_mode")
  _one_of(o.schedule, SCHEDULES, "optimizer.schedule")
  if o.warmup_steps < 0 or o.warmup_steps > t.steps:
    raise ConfigError(f"optimizer.warmup_steps={o.warmup_steps} must lie in "
                      f"[0, train.steps={t.steps}]")
  for field in ("steps", "batch_size", "eval_every", "eval_batches",
                "checkpoint_every", "log_every"):
    _positive_int(t[field], f"train.{field}")
  _one_of(d.name, data_lib.DATASETS, "data.name")
  _positive_int(d.seq_len, "data.seq_len")
  if d.name == "tokens":
    for field in ("train_path", "val_path"):
      path = os.path.expanduser(d.get(field) or "")
      if not os.path.isfile(path):
        raise ConfigError(f"data.{field}={path!r}: no such token file; set "
                          f"--config.data.{field}=/path/to/tokens.bin")
  data_lib.vocab_size(d)
  _one_of(cfg.wandb.mode, ("disabled", "offline", "online"), "wandb.mode")
