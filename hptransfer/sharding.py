"""One run over a device mesh: data, FSDP and tensor parallelism.

The ``mesh`` config section lays one training run (``hptransfer.train``) out
over the devices, with JAX's own machinery: a ``jax.sharding.Mesh`` with the
named axes ``data``, ``fsdp`` and ``tensor``, ``jit`` with explicit in and out
shardings (XLA's SPMD partitioner inserts the collectives), and orbax for
sharded checkpoints::

    mesh.data   = 0    # 0: whatever devices fsdp x tensor leave (all, by default)
    mesh.fsdp   = 1    # parameters and optimizer state sharded along this axis
    mesh.tensor = 1    # Megatron-style tensor parallelism of attention and MLP
    mesh.tensor_rules = ()  # ((regex, dim), ...): tensor dims of your own model

- **Batch**: rows split over ``data`` x ``fsdp`` (``train.batch_size`` must
  divide by their product).
- **Tensor**: in the built-in Transformer the query, key and value kernels are
  split by columns (whole heads per device: ``mesh.tensor`` must divide the
  heads) and the attention output by rows; the MLP's ``fc_in`` by columns and
  ``fc_out`` by rows (``mesh.tensor`` must divide the MLP width), Megatron's
  pairing, so each block needs one all-reduce per branch.  The MLP and Mixer
  models have rules of their own (``TENSOR_RULES``); a model of your own names
  its dims in ``mesh.tensor_rules``, ``(regex on the leaf path, dim)``, and
  every rule must match a leaf.
- **FSDP**: every leaf is split along its largest axis (other than its
  tensor axis) that ``mesh.fsdp`` divides; a leaf no axis divides is
  replicated, and the run says so once, naming the leaves.
- **Optimizer state** is sharded as the parameter it belongs to (Adam's
  moments have the parameter's shape); scalars are replicated.

Sharding changes where numbers live, never which numbers: the per-leaf
multipliers, init stds and learning rates are the parameterization's, read
from its table as without a mesh, for built-in and user models alike (the
failure mode of microsoft/mup under FSDP, mup#59, is that flattening loses
the shapes; here the table is computed from the unsharded abstract params).
A run on one device compiles the same program it always did.
"""
from __future__ import annotations

import math
import re
from typing import Iterable

import jax
import numpy as np

from hptransfer.configlib import ConfigError
from hptransfer.parameterization import path_str

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Tensor-parallel dims of the built-in models: (regex on the leaf path, dim).
TENSOR_RULES = {
    "transformer": (
        (r"attn/(query|key|value)/kernel$", 1),   # column parallel: heads split
        (r"attn/(query|key|value)/bias$", 0),
        (r"attn/out/kernel$", 0),                 # row parallel
        (r"mlp/fc_in/kernel$", 1),                # column parallel
        (r"mlp/fc_in/bias$", 0),
        (r"mlp/fc_out/kernel$", 0),               # row parallel
    ),
    # The MLP's hidden layers have no column/row pair: each is column
    # parallel and its output is gathered for the next (or the residual).
    "mlp": ((r"(block|hidden)_\d+/kernel$", 1), (r"(block|hidden)_\d+/bias$", 0)),
    "mixer": (
        (r"(token|channel)_in/kernel$", 1), (r"(token|channel)_in/bias$", 0),
        (r"(token|channel)_out/kernel$", 0),
    ),
}


class MeshError(ConfigError):
  """A mesh that cannot lay out this run; the message names the field and the fix."""


# ----------------------------------------------------------------------------
# The mesh.


def axis_size(mcfg, name: str) -> int:
  v = mcfg.get(name, 0 if name == "data" else 1)
  lo = 0 if name == "data" else 1
  if isinstance(v, bool) or not isinstance(v, int) or v < lo:
    raise MeshError(f"mesh.{name}={v!r} must be an integer >= {lo}"
                    + (" (0: the devices the other axes leave)" if name == "data" else "")
                    + f"; set --config.mesh.{name}=<that>")
  return v


def mesh_shape(mcfg, n_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) for ``n_devices``; ``mesh.data = 0`` takes the rest."""
  data, fsdp, tensor = (axis_size(mcfg, a) for a in AXES)
  if data == 0:
    if n_devices % (fsdp * tensor):
      raise MeshError(
          f"mesh.fsdp={fsdp} x mesh.tensor={tensor} = {fsdp * tensor} does not divide the "
          f"{n_devices} devices; pick axis sizes whose product divides {n_devices}")
    data = n_devices // (fsdp * tensor)
  if data * fsdp * tensor != n_devices:
    raise MeshError(
        f"mesh.data={data} x mesh.fsdp={fsdp} x mesh.tensor={tensor} = "
        f"{data * fsdp * tensor}, but there are {n_devices} devices; the product must equal "
        f"the device count: set --config.mesh.data=0 (the rest) or sizes multiplying to "
        f"{n_devices}")
  return data, fsdp, tensor


def is_trivial(mcfg, n_devices: int | None = None) -> bool:
  """Whether the run has one device (then it compiles the unsharded program)."""
  n = jax.device_count() if n_devices is None else n_devices
  return n == 1 and mesh_shape(mcfg, n) == (1, 1, 1)


def make_mesh(shape: tuple[int, int, int], devices=None) -> jax.sharding.Mesh:
  """A ``Mesh`` over ``devices`` (default: all, every host's) with axes ``AXES``."""
  from jax.experimental import mesh_utils
  devices = jax.devices() if devices is None else devices
  try:
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except (AssertionError, ValueError, NotImplementedError):   # shapes it cannot map
    grid = np.asarray(devices).reshape(shape)
  return jax.sharding.Mesh(grid, AXES)


# ----------------------------------------------------------------------------
# Which leaf goes where.


def tensor_rules(cfg) -> tuple:
  """The run's ``(regex, dim)`` tensor rules: ``mesh.tensor_rules`` when set,
  else the registered model's."""
  user = tuple(tuple(r) for r in cfg.mesh.get("tensor_rules", ()) or ())
  if user:
    for r in user:
      if (len(r) != 2 or not isinstance(r[0], str) or isinstance(r[1], bool)
          or not isinstance(r[1], int)):
        raise MeshError(f"mesh.tensor_rules: {r!r} is not a (regex, dim) pair; write "
                        "e.g. ((r'mlp/up/kernel$', 1), (r'mlp/down/kernel$', 0))")
      try:
        re.compile(r[0])
      except re.error as e:
        raise MeshError(f"mesh.tensor_rules: {r[0]!r} is not a regex ({e})") from None
    return user
  if cfg.model.get("module"):
    return ()
  return TENSOR_RULES.get(cfg.model.name, ())


def partition_specs(shapes: dict[str, tuple], shape: tuple[int, int, int], rules: Iterable,
                    where: str = "the model", strict: bool = True) -> tuple[dict, list[str]]:
  """``{leaf path: PartitionSpec}`` and the leaves left replicated on ``fsdp``.

  ``shapes`` is ``{path: shape}`` of the unsharded params; ``shape`` the
  mesh's (data, fsdp, tensor).  With ``strict`` (a user's rules) every rule
  must match a leaf.  Errors name ``mesh.tensor`` or ``mesh.tensor_rules``.
  """
  from jax.sharding import PartitionSpec
  _, fsdp, tensor = shape
  rules = tuple(rules)
  if tensor > 1 and not rules:
    raise MeshError(
        f"mesh.tensor={tensor} needs to know which dim of which leaf to split, and "
        f"{where} has no tensor rules: set --config.mesh.tensor_rules, e.g. "
        "((r'up/kernel$', 1), (r'down/kernel$', 0)), or mesh.tensor=1 (FSDP needs none)")
  used = set()
  specs, replicated = {}, []
  for path, shp in shapes.items():
    axes = [None] * len(shp)
    tdim = None
    if tensor > 1:
      for i, (rx, dim) in enumerate(rules):
        if re.search(rx, path):
          used.add(i)
          if not -len(shp) <= dim < len(shp):
            raise MeshError(f"mesh.tensor_rules: ({rx!r}, {dim}) names dim {dim} of {path}, "
                            f"which has shape {shp}; give a dim in range")
          tdim = dim % len(shp)
          if shp[tdim] % tensor:
            raise MeshError(
                f"mesh.tensor={tensor} does not divide dim {tdim} of {path} (size "
                f"{shp[tdim]}); pick a tensor size that divides it")
          axes[tdim] = "tensor"
          break
    if fsdp > 1:
      cands = [d for d in range(len(shp)) if d != tdim and shp[d] % fsdp == 0]
      if cands:
        axes[max(cands, key=lambda d: (shp[d], -d))] = "fsdp"
      elif math.prod(shp) > 1:
        replicated.append(path)
    specs[path] = PartitionSpec(*axes)
  if tensor > 1 and strict:
    unused = [rules[i][0] for i in range(len(rules)) if i not in used]
    if unused:
      raise MeshError(f"mesh.tensor_rules: {unused} match no leaf of {where} (its leaves: "
                      f"{', '.join(list(shapes)[:6])}, ...); fix the regex or drop the rule")
  return specs, replicated


def check_model(cfg, shape: tuple[int, int, int]) -> None:
  """The built-in Transformer's head and MLP constraints on ``mesh.tensor``,
  said in its own terms (before the generic per-leaf check)."""
  tensor = shape[2]
  m = cfg.model
  if tensor == 1 or m.get("module") or m.name != "transformer":
    return
  heads = m.width // m.head_dim
  if heads % tensor:
    raise MeshError(f"mesh.tensor={tensor} does not divide the {heads} attention heads "
                    f"(model.width={m.width} / model.head_dim={m.head_dim}); tensor "
                    "parallelism keeps whole heads on a device: pick a divisor of the heads")
  hidden = int(m.mlp_ratio * m.width)
  if hidden % tensor:
    raise MeshError(f"mesh.tensor={tensor} does not divide the MLP width {hidden} "
                    f"(model.mlp_ratio x model.width); pick a divisor of it")


def check_batch(cfg, shape: tuple[int, int, int]) -> None:
  rows = shape[0] * shape[1]
  B = cfg.train.batch_size
  if B % rows:
    raise MeshError(f"train.batch_size={B} does not split over mesh.data x mesh.fsdp = "
                    f"{rows} devices; set --config.train.batch_size to a multiple of {rows}")


# ----------------------------------------------------------------------------
# Shardings of a train state.


def _param_spec_list(params_tree, specs: dict):
  leaves, _ = jax.tree_util.tree_flatten_with_path(params_tree)
  return [(tuple(kp), tuple(x.shape), specs[path_str(kp)]) for kp, x in leaves]


def state_shardings(mesh, abstract_state, specs: dict):
  """A tree of ``NamedSharding`` for a train state: each params leaf by its
  spec, each optimizer-state leaf that ends with a params path and has its
  shape by that spec (Adam's moments, Lion's momentum), the rest replicated."""
  from jax.sharding import NamedSharding, PartitionSpec
  plist = _param_spec_list(abstract_state["params"], specs)
  by_suffix = {}
  for kp, shp, spec in plist:
    by_suffix.setdefault(len(kp), {})[kp] = (shp, spec)
  rep = NamedSharding(mesh, PartitionSpec())

  def pick(kp, x):
    kp = tuple(kp)
    for n, table in by_suffix.items():
      if len(kp) >= n and kp[-n:] in table:
        shp, spec = table[kp[-n:]]
        if tuple(x.shape) == shp:
          return NamedSharding(mesh, spec)
    return rep

  return jax.tree_util.tree_map_with_path(pick, abstract_state)


def with_shardings(abstract_tree, shardings):
  """``ShapeDtypeStruct`` leaves carrying ``shardings`` (an orbax restore target)."""
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


def restore_target(abstract_state, layout):
  """``abstract_state`` with the shardings a restore should produce: the
  layout's, or device 0 for a one-device run (whatever mesh saved it)."""
  if layout is not None:
    return with_shardings(abstract_state, layout.state(abstract_state))
  one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one),
                                abstract_state)


def batch_sharding(mesh):
  from jax.sharding import NamedSharding, PartitionSpec
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh):
  from jax.sharding import NamedSharding, PartitionSpec
  return NamedSharding(mesh, PartitionSpec())


def put_global(tree, sharding_fn):
  """Host arrays (the same global values on every process) as global arrays:
  each process places only the slices its own devices hold."""
  def put(x):
    x = np.asarray(x)
    s = sharding_fn(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree_util.tree_map(put, tree)


def bytes_per_device(tree) -> int:
  """The most bytes of ``tree`` that any one (addressable) device holds."""
  per: dict = {}
  for x in jax.tree_util.tree_leaves(tree):
    if not isinstance(x, jax.Array):
      continue
    for shard in x.addressable_shards:
      per[shard.device] = per.get(shard.device, 0) + shard.data.nbytes
  return max(per.values()) if per else 0


class Layout:
  """How one run is laid out: the mesh, its shardings and the notes to print.

  ``Layout.of(cfg, p)`` checks everything before any work; ``None`` for a run
  on one device (the unsharded program)."""

  def __init__(self, cfg, p, devices=None):
    devices = jax.devices() if devices is None else devices
    self.shape = mesh_shape(cfg.mesh, len(devices))
    check_batch(cfg, self.shape)
    check_model(cfg, self.shape)
    self.mesh = make_mesh(self.shape, devices)
    shapes = {k: tuple(v.shape) for k, v in p.table.items()}
    where = (f"model.module={cfg.model.module!r}" if cfg.model.get("module")
             else f"model.name={cfg.model.name!r}")
    user = bool(cfg.mesh.get("tensor_rules", ()))
    self.specs, self.replicated_leaves = partition_specs(shapes, self.shape, tensor_rules(cfg),
                                                         where, strict=user)
    self.batch = batch_sharding(self.mesh)
    self.rep = replicated(self.mesh)

  @classmethod
  def of(cls, cfg, p):
    if is_trivial(cfg.mesh):
      return None
    return cls(cfg, p)

  @property
  def axis_sizes(self) -> dict:
    return dict(zip(AXES, self.shape))

  def note(self) -> str | None:
    """One line on the leaves ``fsdp`` cannot split, or None."""
    if not self.replicated_leaves:
      return None
    shown = ", ".join(self.replicated_leaves[:6])
    more = f" and {len(self.replicated_leaves) - 6} more" if len(self.replicated_leaves) > 6 else ""
    return (f"mesh.fsdp={self.shape[1]} divides no axis of {len(self.replicated_leaves)} "
            f"leaves ({shown}{more}); they are replicated on every fsdp device")

  def state(self, abstract_state):
    return state_shardings(self.mesh, abstract_state, self.specs)


def fetch(tree):
  """``jax.device_get`` that also works on arrays spread over several
  processes: a replicated one is read from this process's copy."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.is_fully_replicated:
        raise ValueError("fetch: a sharded array spanning processes has no local value")
      return np.asarray(x.addressable_data(0))
    return jax.device_get(x)
  return jax.tree_util.tree_map(get, tree)


def is_primary() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0
