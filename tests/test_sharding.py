"""One run over a device mesh (hptransfer.sharding, the mesh section of train).

The multi-device runs happen in tests/mesh_worker.py under 8 fake CPU
devices (or 2 processes of 2); the single-device references here.
"""
import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import ROOT, tiny_config
from hptransfer import build as build_lib
from hptransfer import configlib
from hptransfer import sharding
from hptransfer import train

# The leaves Megatron's rules split along ``tensor`` in the tiny Transformer.
TENSOR_LEAF = re.compile(r"attn/(query|key|value|out)/kernel$|mlp/fc_(in|out)/kernel$")


def _shapes(cfg):
  return {k: tuple(v.shape) for k, v in build_lib.build(cfg).table.items()}


# ----------------------------------------------------------------------------
# Which leaf goes where (no devices needed).


def test_specs_split_heads_by_columns_and_fsdp_the_largest_axis():
  cfg = tiny_config()                     # width 64, head_dim 16, MLP 256, vocab 32, seq 16
  specs, replicated = sharding.partition_specs(_shapes(cfg), (1, 4, 2),
                                               sharding.tensor_rules(cfg), strict=False)
  assert specs["block_0/attn/query/kernel"] == P("fsdp", "tensor")   # [64, 64]: columns
  assert specs["block_0/attn/out/kernel"] == P("tensor", "fsdp")     # rows
  assert specs["block_1/mlp/fc_in/kernel"] == P("fsdp", "tensor")    # [64, 256]
  assert specs["block_1/mlp/fc_out/kernel"] == P("tensor", "fsdp")   # [256, 64]
  assert specs["readout/kernel"] == P("fsdp", None)                  # [64, 32]: larger axis
  assert specs["tok_embed/embedding"] == P(None, "fsdp")             # [32, 64]
  assert specs["final_norm/scale"] == P("fsdp")
  assert replicated == []
  # fsdp 3 divides nothing here: every leaf is replicated, and listed.
  specs3, rep3 = sharding.partition_specs(_shapes(cfg), (1, 3, 1), ())
  assert set(rep3) == set(specs3)
  assert all(all(a is None for a in s) for s in specs3.values())


def test_leaves_no_axis_divides_are_replicated_and_said_once():
  cfg = tiny_config(**{"model.width": 36, "model.head_dim": 12,
                       "parameterization.base_width": 12, "train.batch_size": 8})
  shapes = _shapes(cfg)
  specs, replicated = sharding.partition_specs(shapes, (1, 8, 1), ())
  # width 36 and seq 16: the [16, 36] position table splits along 16, the
  # [36, 144] MLP kernel along 144; a [36] norm gain has no axis 8 divides.
  assert specs["block_0/mlp/fc_in/kernel"] == P(None, "fsdp")
  assert specs["pos_embed/embedding"] == P("fsdp", None)
  assert "final_norm/scale" in replicated and "pos_embed/embedding" not in replicated
  layout = sharding.Layout.__new__(sharding.Layout)
  layout.shape, layout.replicated_leaves = (1, 8, 1), replicated
  note = layout.note()
  assert f"{len(replicated)} leaves" in note and "mesh.fsdp=8" in note


def test_optimizer_state_follows_its_parameter():
  from hptransfer import optim
  cfg = tiny_config()
  p = build_lib.build(cfg)
  tx = optim.build(cfg.optimizer, p.leaf_trees(), cfg.train.steps)
  abstract = jax.eval_shape(lambda: train.init_state(p, tx, 0))
  specs, _ = sharding.partition_specs(_shapes(cfg), (1, 1, 1), ())
  specs = {k: P("x") if k == "readout/kernel" else P() for k in specs}   # mark one leaf
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1), ("x",))
  sh = sharding.state_shardings(mesh, abstract, specs)
  flat = {jax.tree_util.keystr(k): s.spec
          for k, s in jax.tree_util.tree_flatten_with_path(sh)[0]}
  marked = [k for k, s in flat.items() if s == P("x")]
  # the param and Adam's two moments of it; the scalars (step, counts) not
  assert len(marked) == 3 and all("readout" in k for k in marked), marked
  assert flat["['step']"] == P()


# ----------------------------------------------------------------------------
# Bad input, before any work.


def test_bad_meshes_name_the_field():
  cfg = tiny_config()
  with pytest.raises(sharding.MeshError, match=r"mesh.data=2 x mesh.fsdp=2 .* 8 devices"):
    sharding.mesh_shape(_mesh(2, 2, 1), 8)
  with pytest.raises(sharding.MeshError, match="mesh.fsdp=3 x mesh.tensor=1 = 3 does not divide"):
    sharding.mesh_shape(_mesh(0, 3, 1), 8)
  assert sharding.mesh_shape(_mesh(0, 2, 2), 8) == (2, 2, 2)
  for field, value in (("fsdp", 0), ("tensor", -1), ("data", 1.5), ("fsdp", True)):
    axes = {"data": 0, "fsdp": 1, "tensor": 1, field: value}
    with pytest.raises(configlib.ConfigError, match=f"mesh.{field}={value!r} must be an int"):
      sharding.axis_size(_mesh(**axes), field)
  with pytest.raises(configlib.ConfigError, match="mesh.fsdp=0 must be"):
    configlib.validate(tiny_config(**{"mesh.fsdp": 0}))    # with the other checks
  # 4 heads (64 / 16): tensor 8 keeps no whole head per device.
  with pytest.raises(sharding.MeshError, match="does not divide the 4 attention heads"):
    sharding.check_model(cfg, (1, 1, 8))
  with pytest.raises(sharding.MeshError, match="mesh.tensor=3 does not divide the MLP width"):
    sharding.check_model(tiny_config(**{"model.head_dim": 16, "model.width": 48,
                                        "parameterization.base_width": 16,
                                        "model.mlp_ratio": 4.0 / 3}), (1, 1, 3))
  with pytest.raises(sharding.MeshError, match="train.batch_size=4 does not split"):
    sharding.check_batch(cfg, (8, 1, 1))


def test_tensor_rules_of_a_user_model_are_required_and_checked():
  shapes = {"up/kernel": (8, 32), "down/kernel": (32, 8), "norm/scale": (8,)}
  with pytest.raises(sharding.MeshError, match="mesh.tensor_rules"):
    sharding.partition_specs(shapes, (1, 1, 2), (), "model.module='pkg:make'")
  specs, _ = sharding.partition_specs(shapes, (1, 1, 2),
                                      ((r"up/kernel$", 1), (r"down/kernel$", 0)))
  assert specs["up/kernel"] == P(None, "tensor") and specs["down/kernel"] == P("tensor", None)
  with pytest.raises(sharding.MeshError, match=r"\['gate/kernel\$'\] match no leaf"):
    sharding.partition_specs(shapes, (1, 1, 2), ((r"up/kernel$", 1), (r"gate/kernel$", 1)))
  with pytest.raises(sharding.MeshError, match="does not divide dim 1 of up/kernel"):
    sharding.partition_specs(shapes, (1, 1, 3), ((r"up/kernel$", 1),))
  bad = tiny_config(**{"mesh.tensor_rules": (("up", "one"),)})
  with pytest.raises(configlib.ConfigError, match="not a \\(regex, dim\\) pair"):
    configlib.validate(bad)


def _mesh(data, fsdp, tensor):
  import ml_collections
  return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def test_mesh_keys_leave_trial_ids_and_resume_alone():
  from hptransfer import grid
  a, b = tiny_config(), tiny_config(**{"mesh.fsdp": 4, "mesh.data": 2})
  assert grid.trial_id(a) == grid.trial_id(b)
  assert configlib.differing_keys(a.to_dict(), b.to_dict()) == []


# ----------------------------------------------------------------------------
# Runs over 8 fake devices against one device.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _multihost_procs(wd):
  """Two processes of 2 CPU devices each, one run over mesh (2, 2, 1), with
  jax.distributed on localhost (hptransfer.train --multihost)."""
  port, procs = _free_port(), []
  for pid in range(2):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu", "HPTRANSFER_COORDINATOR": f"localhost:{port}",
           "HPTRANSFER_NUM_PROCESSES": "2", "HPTRANSFER_PROCESS_ID": str(pid)}
    cmd = [sys.executable, "-m", "hptransfer.train", "--multihost",
           "--config", os.path.join(ROOT, "configs", "transformer.py"), "--workdir", str(wd)]
    cmd += [f"--config.{k}={v}" for k, v in _tiny_flags().items()]
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  return procs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The 8-device runs (tests/mesh_worker.py) and the two-process run, in
  the background, while the one-device references run here."""
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  import mesh_worker
  base = tmp_path_factory.mktemp("meshes")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  out = base / "out.json"
  worker = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "mesh_worker.py"),
                             "meshes", str(out), str(base)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  multihost = _multihost_procs(base / "multihost")
  wd = tmp_path_factory.mktemp("single")
  cfg = mesh_worker.config((1, 1, 1))
  train.train(cfg, str(wd / "five"), progress=False)
  cfg10 = mesh_worker.config((1, 1, 1), **{"train.steps": 10, "train.eval_every": 10,
                                           "train.checkpoint_every": 10})
  train.train(cfg10, str(wd / "ten"), progress=False)
  mesh_worker.write_user_model(str(wd / "user_model"))
  train.train(mesh_worker.user_config((1, 1, 1), str(wd / "user_model")), str(wd / "user"),
              progress=False)
  single = {"five": mesh_worker.losses(str(wd / "five")),
            "user": mesh_worker.losses(str(wd / "user")),
            "ten": mesh_worker.losses(str(wd / "ten")),
            "params": train.load_checkpoint(cfg, str(wd / "five"))["params"],
            "abstract": build_lib.build(cfg).abstract_params()}
  log = worker.communicate(timeout=600)[0]
  assert worker.returncode == 0, log[-4000:]
  with open(out) as f:
    meshes = json.load(f)
  mh_logs = [pr.communicate(timeout=300)[0] for pr in multihost]
  return {"meshes": meshes, "single": single, "multihost_dir": base / "multihost",
          "multihost": [(pr.returncode, lg) for pr, lg in zip(multihost, mh_logs)]}


@pytest.fixture(scope="module")
def mesh_runs(runs):
  return runs["meshes"]


@pytest.fixture(scope="module")
def single_device(runs):
  return runs["single"]


def test_every_mesh_trains_what_one_device_trains(mesh_runs, single_device):
  assert mesh_runs["devices"] == 8
  ref = np.asarray(single_device["five"])
  assert len(ref) == 5
  for shape, run in mesh_runs["shapes"].items():
    got = np.asarray(run["losses"])
    np.testing.assert_allclose(got, ref, rtol=2e-5, err_msg=shape)
    assert run["summary"]["mesh"] == dict(zip(sharding.AXES, map(int, shape.split("x"))))
  # a kill-free resume on another mesh continues the run
  np.testing.assert_allclose(mesh_runs["resumed_losses"], single_device["ten"], rtol=2e-5)


def test_each_leaf_holds_its_fraction(mesh_runs, single_device):
  abstract = single_device["abstract"]
  for shape, run in mesh_runs["shapes"].items():
    data, fsdp, tensor = map(int, shape.split("x"))
    for path, frac in run["param_fractions"].items():
      want = 1.0 / (fsdp * (tensor if TENSOR_LEAF.search(path) else 1))
      assert frac == pytest.approx(want), (shape, path)
    # Adam's moments are split as their parameters: opt state ~ 2x params
    s = run["summary"]
    assert 2.0 <= s["opt_state_bytes_per_device"] / s["param_bytes_per_device"] < 2.05
    total = sum(np.prod(x.shape) * 4 for x in jax.tree_util.tree_leaves(abstract))
    assert s["param_bytes_per_device"] < total / fsdp * 1.01 + 1
  one = mesh_runs["shapes"]["8x1x1"]["summary"]["param_bytes_per_device"]
  four = mesh_runs["shapes"]["2x4x1"]["summary"]["param_bytes_per_device"]
  assert four == pytest.approx(one / 4)


def test_a_user_model_shards_by_its_own_rules(mesh_runs, single_device):
  """FSDP and the user's tensor rules on a model from outside the package:
  the losses of one device, and each leaf split as its rules say."""
  np.testing.assert_allclose(mesh_runs["user"]["losses"], single_device["user"], rtol=2e-5)
  frac = mesh_runs["user"]["param_fractions"]
  assert frac["block_0_up/kernel"] == frac["block_0_down/kernel"] == pytest.approx(1 / 8)
  assert frac["head/kernel"] == frac["embed/embedding"] == pytest.approx(1 / 4)   # fsdp only


def test_a_checkpoint_restores_under_another_mesh(mesh_runs, single_device):
  assert mesh_runs["restore_equal"] == [True, True]
  frac = mesh_runs["restored_fraction"]["1x4x2"]
  assert frac["block_0/attn/query/kernel"] == pytest.approx(1 / 8)
  assert mesh_runs["restored_fraction"]["8x1x1"]["block_0/attn/query/kernel"] == 1.0


def test_sp_and_mup_at_base_width_stay_bitwise_equal_under_a_mesh(mesh_runs):
  assert mesh_runs["sp_mup_base_bitwise"] is True


def test_two_processes_train_what_one_device_trains(runs, single_device):
  """One run over two processes: the losses of one device, one set of files,
  and a checkpoint that restores on one device."""
  for rc, log in runs["multihost"]:
    assert rc == 0, log[-4000:]
  wd = runs["multihost_dir"]
  with open(wd / "summary.json") as f:
    summary = json.load(f)
  assert summary["processes"] == 2 and summary["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
  import mesh_worker
  np.testing.assert_allclose(mesh_worker.losses(str(wd)), single_device["five"], rtol=2e-5)
  restored = train.load_checkpoint(mesh_worker.config((1, 1, 1)), str(wd))["params"]
  for a, b in zip(jax.tree_util.tree_leaves(restored),
                  jax.tree_util.tree_leaves(single_device["params"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def _tiny_flags() -> dict:
  """mesh_worker.config((2, 2, 1)) as --config flags."""
  return {"model.width": 64, "model.depth": 1, "model.head_dim": 16,
          "parameterization.base_width": 32, "data.name": "synthetic", "data.vocab_size": 32,
          "data.seq_len": 16, "train.batch_size": 8, "train.steps": 5, "train.eval_every": 5,
          "train.eval_batches": 1, "train.checkpoint_every": 5, "train.log_every": 1,
          "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 1}


def test_a_sweep_refuses_fsdp_and_says_where_it_belongs(tmp_path):
  from hptransfer import sweep
  cfg = tiny_config(**{"mesh.fsdp": 2})
  with pytest.raises(sweep.SweepError, match="mesh.fsdp=2, mesh.tensor=1: a sweep spreads"):
    sweep.run(cfg, [{"optimizer.lr": 0.01}], str(tmp_path / "w"), progress=False)
  assert not (tmp_path / "w").exists()
