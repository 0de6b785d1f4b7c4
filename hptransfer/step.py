"""The compiled programs: train, eval and guarded steps, state init and stacking.

Everything that trains calls these: ``hptransfer.train`` (one run),
``hptransfer.sweep`` (vmapped groups), ``hptransfer.coord_check`` and the
benchmarks.  Here, once:

- **diverged**: a step whose loss is non-finite, or above
  ``train.divergence_mult`` times the run's first loss (``is_bad``).  From that
  step on the run is frozen (its state stops changing) and recorded as
  diverged at that step;
- **final_train_loss**: the mean training loss over the last 10% of the
  steps (at least one; ``tail_start``), of a run that did not diverge.

A ``Parameterized`` built from a config (``hptransfer.build``) carries its task,
which gives the batches, the model's inputs and the loss.

State: ``{"step", "params", "opt_state"}`` for ``make_train_step``; the
guarded state adds ``alive``, ``loss0``, ``diverged_step``, ``tail_sum`` and
``tail_n``.  A group's state stacks K trials on a leading axis.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hptransfer import optim
from hptransfer import perf
from hptransfer.parameterization import path_str

FINAL_LOSS_DIVISOR = 10     # final_train_loss: mean over the last steps // 10 (at least 1)
GUARD_KEYS = ("alive", "loss0", "diverged_step", "tail_sum", "tail_n")
TRIAL_LOOPS = ("auto", "vmap", "map", "seq")


class StepError(ValueError):
  """A bad step setting; the message names it and the fix."""


# ----------------------------------------------------------------------------
# One definition of divergence and of the final loss.


def is_bad(loss, loss0, divergence_mult: float):
  """Non-finite, or above ``divergence_mult`` times the first loss."""
  return ~jnp.isfinite(loss) | (loss > divergence_mult * loss0)


def tail_start(total_steps):
  """First 0-based step whose loss counts towards ``final_train_loss``: the
  last ``max(1, total_steps // 10)`` steps are the tail."""
  return total_steps - jnp.maximum(1, total_steps // FINAL_LOSS_DIVISOR)


def final_train_loss(tail_sum, tail_n, alive) -> float | None:
  """The guarded state's final training loss, or None (diverged, or no tail)."""
  if not bool(alive) or not int(tail_n):
    return None
  return float(tail_sum / tail_n)


# ----------------------------------------------------------------------------
# Steps.


def loss_fn(p, params, consts, batch, z_loss: float = 0.0, rngs=None):
  """The task's mean loss (plus z-loss on the logits); returns (loss, metrics).
  ``rngs`` (``{"dropout": key}``) turns dropout on."""
  task = p.task
  kw = {"rngs": rngs} if rngs else {}
  logits = p.apply(params, task.inputs(batch), consts=consts, **kw)
  ce, metrics = task.loss(logits, batch)
  loss = ce
  if z_loss:
    loss = loss + z_loss * jnp.square(jax.nn.logsumexp(logits, axis=-1)).mean()
  return loss, metrics


def rms_by_leaf(tree) -> dict[str, jax.Array]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_str(k): jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))
          for k, x in leaves}


def global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in jax.tree_util.tree_leaves(tree)))


def make_train_step(p, tx, z_loss: float = 0.0, leaf_rms: bool = True,
                    grad_norm: bool = True):
  """(state, consts, batch) -> (state, metrics); state = {step, params, opt_state}.

  ``consts`` (``p.consts()``) holds the forward multipliers and model knobs.
  Metrics: ``loss``, ``ce``, ``grad_norm`` (unless ``grad_norm=False``) and,
  with ``leaf_rms``, the per-leaf rms of params, grads and updates.  With
  dropout (``p.dropout_on``) the masks of step t come from
  ``api.dropout_rng(consts, t)``: a pure function of the trial's seed and the
  step, so a resumed run repeats them.
  """
  from hptransfer import api
  grad_fn = jax.value_and_grad(lambda prm, c, b, r: loss_fn(p, prm, c, b, z_loss, r),
                               has_aux=True)
  dropout_on = p.dropout_on

  def step(state, consts, batch):
    rngs = {"dropout": api.dropout_rng(consts, state["step"])} if dropout_on else None
    (loss, aux), grads = grad_fn(state["params"], consts, batch, rngs)
    metrics = {"loss": loss, "ce": aux["ce"]}
    if grad_norm:
      metrics["grad_norm"] = global_norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    if leaf_rms:
      metrics["rms"] = {"params": rms_by_leaf(params), "grads": rms_by_leaf(grads),
                        "updates": rms_by_leaf(updates)}
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

  return step


def make_eval_step(p):
  """(params, consts, batch) -> the task's eval metrics ({"loss": ..., ...})."""
  def step(params, consts, batch):
    logits = p.apply(params, p.task.inputs(batch), consts=consts)
    return p.task.eval_metrics(logits, batch)
  return step


def make_guarded_step(p, tx, z_loss: float = 0.0, divergence_mult: float = 3.0,
                      leaf_rms: bool = False, grad_norm: bool = True):
  """A train step that freezes the run from the step its loss goes bad
  (``is_bad``) and sums the losses of the final tail (``tail_start``)."""
  inner_step = make_train_step(p, tx, z_loss, leaf_rms, grad_norm)
  mult = float(divergence_mult)

  def step(state, consts, batch):
    # The run length comes from the optimizer state, so the program does not
    # depend on it (runs of different lengths share it).
    total = optim.get_hparams(state["opt_state"])["steps"]
    inner = {k: state[k] for k in ("step", "params", "opt_state")}
    new, m = inner_step(inner, consts, batch)
    loss = m["loss"]
    loss0 = jnp.where(state["step"] == 0, loss, state["loss0"])
    bad = is_bad(loss, loss0, mult)
    alive = state["alive"] & ~bad
    new = jax.tree_util.tree_map(lambda n, o: jnp.where(alive, n, o), new, inner)
    in_tail = alive & (state["step"] >= tail_start(total))
    return {**new, "alive": alive, "loss0": loss0,
            "diverged_step": jnp.where(state["alive"] & bad, state["step"] + 1,
                                       state["diverged_step"]),
            "tail_sum": state["tail_sum"] + jnp.where(in_tail, loss, 0.0),
            "tail_n": state["tail_n"] + in_tail.astype(jnp.int32)}, m

  return step


def guarded_step_of(p, tx, cfg, leaf_rms: bool = False, grad_norm: bool = True):
  """``make_guarded_step`` with the config's z-loss and divergence multiple."""
  return make_guarded_step(p, tx, cfg.model.get("z_loss", 0.0),
                           cfg.train.get("divergence_mult", 3.0), leaf_rms, grad_norm)


# ----------------------------------------------------------------------------
# State.


def init_state(p, tx, seed: int) -> dict:
  """{step, params, opt_state} of one run."""
  params = p.init(jax.random.key(seed))
  return {"step": jnp.zeros([], jnp.int32), "params": params, "opt_state": tx.init(params)}


def guard(state: dict, shape: tuple = ()) -> dict:
  """A run's state with the guard's fields (alive, first loss, tail sums);
  ``shape`` (K,) for a group's K stacked trials."""
  return {**state, "alive": jnp.ones(shape, bool), "loss0": jnp.zeros(shape, jnp.float32),
          "diverged_step": jnp.zeros(shape, jnp.int32),
          "tail_sum": jnp.zeros(shape, jnp.float32), "tail_n": jnp.zeros(shape, jnp.int32)}


def stack(trees):
  """Trees of the same structure stacked on a new leading axis."""
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _opt_mults(p) -> dict:
  fields = ("lr_mult", "wd_mult", "eps_mult")
  trees = p.leaf_trees(fields)
  return {k: trees[k] for k in fields}


def init_group(builts, cfgs, program=None) -> dict:
  """The stacked, guarded state of K trials, in one compiled call.

  Params come from each trial's seed and init stds; the optimizer state from
  the first trial's optimizer config with every trial's numbers (``lr``,
  decay, betas, schedule, run length, per-leaf multipliers) as vmapped
  inputs, so the optimizer's ``init`` puts each trial's own values into its
  state.  The trials must share a compiled shape (``hptransfer.grid``).
  ``program``: ``init_program(builts[0], cfgs[0])`` compiled ahead (``aot``
  on ``init_args``'s abstract values); by default it is jitted here.
  """
  args = init_args(builts, cfgs)
  params, opt = (program or init_program(builts[0], cfgs[0]))(*args)
  K = len(cfgs)
  return guard({"step": jnp.zeros([K], jnp.int32), "params": params, "opt_state": opt}, (K,))


def init_program(b0, cfg0, batched: bool = True):
  """The jitted (keys, stds, hp, mults, steps) -> (params, opt_state) of a
  group whose first trial is built as ``b0`` from ``cfg0``: vmapped over
  stacked trials (``init_args``), or for one trial (``batched=False``,
  ``trial_init_args``)."""
  ocfg0 = cfg0.optimizer
  init_fn = b0.init_fn()
  # Muon's update labels are static (strings), the same for every trial.
  static = {k: v for k, v in b0.leaf_trees(()).items() if k == "labels"}

  def init_one(key, stds, hp, mults, steps):
    params = init_fn(jax.random.wrap_key_data(key), stds)
    return params, optim.build(ocfg0, {**mults, **static}, steps, hp).init(params)
  return jax.jit(jax.vmap(init_one) if batched else init_one,
                 compiler_options=perf.init_compiler_options())


def init_args(builts, cfgs) -> tuple:
  """``init_program``'s arguments: every trial's key, init stds, optimizer
  numbers, per-leaf multipliers and run length, stacked."""
  keys = jnp.stack([jax.random.key_data(jax.random.key(c.seed)) for c in cfgs])
  stds = stack([b.leaf_trees(("init_std",))["init_std"] for b in builts])
  hp = stack([{k: jnp.asarray(v, jnp.float32) for k, v in optim.hparams(c.optimizer).items()}
              for c in cfgs])
  mults = stack([_opt_mults(b) for b in builts])
  steps = jnp.asarray([c.train.steps for c in cfgs], jnp.int32)
  return keys, stds, hp, mults, steps


def trial_init_args(b, c) -> tuple:
  """One trial's ``init_program(..., batched=False)`` arguments: its key,
  init stds, optimizer numbers, per-leaf multipliers and run length."""
  return (jax.random.key_data(jax.random.key(c.seed)), b.leaf_trees(("init_std",))["init_std"],
          {k: np.float32(v) for k, v in optim.hparams(c.optimizer).items()},
          _opt_mults(b), np.int32(c.train.steps))


def init_trials(builts, cfgs, program=None) -> list[dict]:
  """``init_group``'s state as K per-trial states (the ``seq`` loop's), from
  the unbatched program (``init_program(..., batched=False)``) called once a
  trial: the same bits as slicing ``init_group``'s (tests/test_compile_ahead.py), and
  a cheaper compile than the vmapped program's (0.85 against 1.54 s for the
  16-trial width-128 study on 2 CPU cores, docs/perf/group_setup_cpu.json),
  which stands between a group and its first step."""
  program = program or init_program(builts[0], cfgs[0], batched=False)
  out = []
  for b, c in zip(builts, cfgs):
    params, opt = program(*trial_init_args(b, c))
    out.append(guard({"step": jnp.zeros([], jnp.int32), "params": params, "opt_state": opt}))
  return out


def init_traced(b0, cfg0, K: int | None = None):
  """The init program of a group whose first trial is built as ``b0`` from
  ``cfg0``, traced for its abstract arguments (``jax.stages.Traced``):
  vmapped over K stacked trials (``init_group``'s), or for one trial with
  ``K=None`` (``init_trials``').  One trace serves both the abstract state
  (``abstract_state``) and the program (``.lower()``)."""
  if K is None:
    return init_program(b0, cfg0, batched=False).trace(*abstract(trial_init_args(b0, cfg0)))
  args = jax.eval_shape(lambda: init_args([b0] * K, [cfg0] * K))
  return init_program(b0, cfg0).trace(*args)


def abstract_state(traced, K: int | None = None, stacked: bool = False) -> dict:
  """``jax.ShapeDtypeStruct``s of the guarded state that ``init_traced``'s
  program starts, nothing computed: one trial's; with ``K``, the K trials'
  stacked, from a one-trial trace (a leading K axis on every leaf) or, with
  ``stacked``, from the K-trial trace."""
  params, opt = traced.out_info
  shape = (K,) if stacked else ()
  state = jax.eval_shape(lambda p, o: guard({"step": jnp.zeros(shape, jnp.int32), "params": p,
                                             "opt_state": o}, shape), params, opt)
  if K is None or stacked:
    return state
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct((K,) + x.shape, x.dtype), state)


def aot_init(b0, cfg0, K: int | None = None):
  """``init_traced``'s program compiled ahead (as ``aot`` compiles)."""
  return init_traced(b0, cfg0, K).lower().compile()


# ----------------------------------------------------------------------------
# Compiled group programs.


def resolve_trial_loop(trial_loop: str, sharded: bool) -> str:
  """How a group steps its trials.

  ``vmap``: one batched program over the K stacked trials (what pays on a
  GPU: 32 width-128 trials ran at 3.0x one trial's tokens/s on an H100).
  ``map``: ``jax.lax.map``, the unbatched step applied to each trial in turn
  inside one compiled program over the stacked state: plain 2-D matmuls, but
  every trial's params and optimizer state are sliced out of the stack and
  written back each step.
  ``seq``: the unbatched step compiled once for one trial and dispatched K
  times a step, each trial's state kept as its own arrays (stacked only for
  checkpoints and results).  On 2 CPU cores this is 1.25x faster than ``map``
  for the 16-trial width-128 group (133 against 167 ms a group step;
  docs/perf/trial_loops_cpu.json): the slicing and writing back is gone.
  ``auto``: seq on an unsharded CPU group, else vmap.
  """
  if trial_loop not in TRIAL_LOOPS:
    raise StepError(f"trial_loop={trial_loop!r} is not one of {', '.join(TRIAL_LOOPS)}; "
                    "pass --trial_loop=auto (seq on CPU, vmap on accelerators)")
  if trial_loop != "auto":
    return trial_loop
  return "seq" if jax.default_backend() == "cpu" and not sharded else "vmap"


def compile_group(p, tx, cfg, loop: str):
  """(step, eval), jitted (not yet compiled), for a group's trials: vmapped
  or mapped over the stacked state, or (``seq``) for one trial's state,
  called once per trial (see ``resolve_trial_loop``); the batch is shared by
  every trial.  ``step`` returns (state, metrics); ``eval`` the eval metrics.
  ``aot`` compiles them ahead of their first call.

  The step's metrics are ``loss`` and ``ce``, what a sweep reads: no grad
  norm, whose reductions over every gradient cost a measurable part of a
  small trial's CPU step (docs/performance.md, "Copies and the grad norm");
  the state it returns is the same bits either way
  (tests/test_compile_ahead.py)."""
  guarded = guarded_step_of(p, tx, cfg, grad_norm=False)
  evaluate = make_eval_step(p)
  mm = perf.matmul_dtype(cfg)
  if loop == "seq":
    return (perf.jit_step(guarded, mm, donate_argnums=0), perf.jit_step(evaluate, mm))
  if loop == "vmap":
    return (perf.jit_step(jax.vmap(guarded, in_axes=(0, 0, None)), mm, donate_argnums=0),
            perf.jit_step(jax.vmap(evaluate, in_axes=(0, 0, None)), mm))

  def step(state, consts, batch):
    return jax.lax.map(lambda sc: guarded(sc[0], sc[1], batch), (state, consts))

  def evaluate_all(params, consts, batch):
    return jax.lax.map(lambda pc: evaluate(pc[0], pc[1], batch), (params, consts))
  return (perf.jit_step(step, mm, donate_argnums=0), perf.jit_step(evaluate_all, mm))


def abstract(tree, sharding=None):
  """``jax.ShapeDtypeStruct``s of a tree of arrays (or of structs), with
  ``sharding`` when given: what ``aot`` lowers for."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def aot(jitted, *args):
  """``jitted`` lowered for the abstract ``args`` and compiled: a
  ``jax.stages.Compiled`` to call with arrays of exactly those shapes.  The
  same XLA program ``jitted``'s first call would compile (same HLO, same
  compiler options), so its results are bitwise the same
  (tests/test_compile_ahead.py); it can run on another thread while the
  device trains."""
  return jitted.lower(*args).compile()


def stack_on_host(trees):
  """``stack`` through the host: one copy per leaf instead of a dispatched
  concatenation (the ``seq`` loop's per-trial states, at checkpoints)."""
  host = jax.device_get(trees)
  return jax.device_put(jax.tree_util.tree_map(lambda *xs: np.stack(xs), *host))


def unstack(tree, K: int) -> list:
  """The K trials of a stacked tree, each as its own arrays (through the
  host: one copy, instead of a dispatched slice per leaf and trial)."""
  host = jax.device_get(tree)
  return [jax.device_put(jax.tree_util.tree_map(lambda x, k=k: x[k], host)) for k in range(K)]

