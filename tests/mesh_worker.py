"""Runs of tests/test_sharding.py that need several devices or processes.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/mesh_worker.py meshes OUT
    python tests/mesh_worker.py multihost OUT   (under HPTRANSFER_* env, with --multihost)

Writes OUT.json: per mesh shape, the per-step training losses, each params
leaf's shard fraction and the bytes per device; a restore under another
mesh; SP and muP at the base width under one mesh.  Not a test module
(pytest collects test_*.py only).
"""
from __future__ import annotations

import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

SHAPES = ((8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 4, 2))

# A model of a user's own (tests/test_cli_user_model.py's), with tensor rules
# for its MLP pair.
USER_RULES = ((r"block_0_up/kernel$", 1), (r"block_0_up/bias$", 0),
              (r"block_0_down/kernel$", 0))


def user_config(shape, module_dir):
  if module_dir not in sys.path:
    sys.path.insert(0, module_dir)
  cfg = config(shape, **{"model.module": "mesh_user_model:make_model"})
  cfg.mesh.tensor_rules = USER_RULES
  return cfg


def write_user_model(module_dir):
  os.makedirs(module_dir, exist_ok=True)
  from test_cli_user_model import MODELS
  with open(os.path.join(module_dir, "mesh_user_model.py"), "w") as f:
    f.write(MODELS)


def config(shape, **overrides):
  from conftest import tiny_config
  cfg = tiny_config(**{"model.depth": 1, "train.steps": 5, "train.batch_size": 8, "train.eval_every": 5,
                      "train.checkpoint_every": 5, "train.log_every": 1,
                      "train.eval_batches": 1, **overrides})
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = shape
  return cfg


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["train_loss"] for r in map(json.loads, f) if "train_loss" in r]


def fractions(tree):
  import jax
  from hptransfer.parameterization import path_str
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_str(k): x.addressable_shards[0].data.size / x.size for k, x in leaves}


def meshes(out, base):
  import jax
  import numpy as np
  from hptransfer import train
  res = {"devices": jax.device_count(), "shapes": {}}
  for shape in SHAPES:
    wd = os.path.join(base, "x".join(map(str, shape)))
    cfg = config(shape)
    summary = train.train(cfg, wd, progress=False)
    state = train.load_checkpoint(cfg, wd)
    res["shapes"]["x".join(map(str, shape))] = {
        "losses": losses(wd), "summary": summary,
        "param_fractions": fractions(state["params"]),
        "mu_fractions": fractions(state["opt_state"])}
  # Saved under (2, 4, 1), restored under (1, 4, 2) and under (8, 1, 1).
  saved = train.load_checkpoint(config((2, 4, 1)), os.path.join(base, "2x4x1"))
  same = []
  for shape in ((1, 4, 2), (8, 1, 1)):
    other = train.load_checkpoint(config(shape), os.path.join(base, "2x4x1"))
    same.append(all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(other))))
    res.setdefault("restored_fraction", {})["x".join(map(str, shape))] = fractions(
        other["params"])
  res["restore_equal"] = same
  # Resume on another mesh: 5 steps on (2, 4, 1), then to 10 on (2, 2, 2).
  shutil.copytree(os.path.join(base, "2x4x1"), os.path.join(base, "resumed"))
  train.train(config((2, 2, 2), **{"train.steps": 10, "train.eval_every": 10,
                                   "train.checkpoint_every": 10}),
              os.path.join(base, "resumed"), progress=False)
  res["resumed_losses"] = losses(os.path.join(base, "resumed"))
  # A user's model with its own tensor rules, under (1, 4, 2).
  module_dir = os.path.join(base, "user_model")
  write_user_model(module_dir)
  wd = os.path.join(base, "user_1x4x2")
  cfg = user_config((1, 4, 2), module_dir)
  train.train(cfg, wd, progress=False)
  res["user"] = {"losses": losses(wd),
                 "param_fractions": fractions(train.load_checkpoint(cfg, wd)["params"])}
  # SP and muP at the base width, under (2, 2, 2).
  params = {}
  for name in ("sp", "mup"):
    cfg = config((2, 2, 2), **{"model.width": 32, "parameterization.name": name})
    wd = os.path.join(base, f"base_{name}")
    train.train(cfg, wd, progress=False)
    params[name] = train.load_checkpoint(cfg, wd)["params"]
  res["sp_mup_base_bitwise"] = all(
      np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
          jax.tree_util.tree_leaves(params["sp"]), jax.tree_util.tree_leaves(params["mup"])))
  with open(out, "w") as f:
    json.dump(res, f)


if __name__ == "__main__":
  what, out = sys.argv[1], sys.argv[2]
  if what == "meshes":
    meshes(out, sys.argv[3])
