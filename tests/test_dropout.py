"""Dropout: a model setting whose rate is a vmapped value, so sweeps and
searches vary it inside one compiled group."""
import jax
import jax.numpy as jnp
import pytest

from conftest import tiny_config
from hptransfer import build as build_lib
from hptransfer import configlib
from hptransfer import optim
from hptransfer import results as results_lib
from hptransfer import search
from hptransfer import step as step_lib
from hptransfer import sweep as S

FAST = {"train.steps": 12, "train.log_every": 4, "train.eval_every": 4,
        "train.checkpoint_every": 4}


def _classifier(**kw):
  from configs import classifier
  cfg = classifier.get_config()
  cfg.model.width, cfg.parameterization.base_width = 32, 16
  cfg.train.batch_size = 8
  for k, v in kw.items():
    S.set_key(cfg, k, v)
  return cfg


def _programs(cfg):
  b = build_lib.build(cfg)
  tx = optim.build(cfg.optimizer, b.leaf_trees(), 10)
  return (b, tx, jax.jit(step_lib.make_train_step(b, tx, leaf_rms=False)),
          jax.jit(step_lib.make_eval_step(b)))


def _batch(b, t, split="train"):
  return b.task.batch(0, t, b.cfg.train.batch_size, split)


@pytest.mark.parametrize("make", [lambda **k: tiny_config(**k),
                                  lambda **k: tiny_config("mlp", **k), _classifier],
                         ids=["transformer", "mlp", "mixer"])
def test_dropout_masks_training_only_and_depends_on_seed_and_step(make):
  b0, tx, train0, eval0 = _programs(make())
  b1, _, train1, eval1 = _programs(make(**{"model.dropout": 0.3}))
  state = step_lib.init_state(b0, tx, 0)
  loss = lambda f, b, t=0, consts=None: float(f(state, consts or b.consts(), _batch(b, t))[1]["loss"])
  plain, drop = loss(train0, b0), loss(train1, b1)
  assert drop != plain                                # masks are drawn in training
  assert loss(train1, b1) == drop                     # and the same ones again
  # Eval never drops: the same params give the same eval loss.
  val = _batch(b0, 0, "val")
  assert float(eval0(state["params"], b0.consts(), val)["loss"]) == float(
      eval1(state["params"], b1.consts(), val)["loss"])
  # Another seed (its consts carry its dropout key) draws other masks.
  other_seed = build_lib.build(make(**{"model.dropout": 0.3, "seed": 1}))
  assert loss(train1, b1, consts=other_seed.consts()) != drop
  # So does another step: the key folds in state["step"].
  later = {**state, "step": state["step"] + 1}
  assert float(train1(later, b1.consts(), _batch(b1, 0))[1]["loss"]) != drop


def test_a_resumed_state_draws_the_masks_of_its_step():
  """The masks of step t are a function of (seed, t) only: two steps, a
  round trip through host memory (a checkpoint), two more, equal four."""
  b, tx, train, _ = _programs(tiny_config(**{"model.dropout": 0.2}))

  def run(state, steps):
    losses = []
    for t in steps:
      state, m = train(state, b.consts(), _batch(b, t))
      losses.append(float(m["loss"]))
    return state, losses
  _, straight = run(step_lib.init_state(b, tx, 0), range(4))
  half, first = run(step_lib.init_state(b, tx, 0), range(2))
  restored = jax.tree_util.tree_map(jnp.asarray, jax.device_get(half))
  _, rest = run(restored, range(2, 4))
  assert first + rest == straight


def test_rates_share_a_group_and_match_their_solo_runs(tmp_path):
  cfg = tiny_config(**FAST)
  rows = S.run(cfg, S.sweep("model.dropout", [0.0, 0.1, 0.3]), str(tmp_path / "grid"),
               progress=False)
  by_rate = {r["model.dropout"]: r for r in rows}
  # Rate 0 draws no masks: a program (and group) of its own, with the id of a
  # config that never mentions dropout.
  assert by_rate[0.1]["group_id"] == by_rate[0.3]["group_id"] != by_rate[0.0]["group_id"]
  assert by_rate[0.1]["group_size"] == 2 and by_rate[0.0]["group_size"] == 1
  assert by_rate[0.0]["trial_id"] == S.trial_id(tiny_config(**FAST))
  solo = S.run(cfg, S.sweep("model.dropout", [0.1]), str(tmp_path / "solo"), progress=False)
  for key in ("final_train_loss", "final_eval_loss", "best_eval_loss"):
    assert solo[0][key] == by_rate[0.1][key], key
  assert len({by_rate[r]["final_train_loss"] for r in (0.0, 0.1, 0.3)}) == 3


def test_a_search_tunes_dropout_inside_its_vmapped_rounds(tmp_path):
  cfg = tiny_config(**{**FAST, "search.num_trials": 4, "search.batch_size": 4,
                       "search.sampler": "random"})
  space = {"optimizer.lr": search.loguniform(1e-3, 1e-1),
           "model.dropout": search.uniform(0.05, 0.5)}
  search.run(cfg, space, str(tmp_path), sweep_name="d", progress=False)
  rows = results_lib.read_rows(str(tmp_path))
  assert len(rows) == 4 and {r["group_size"] for r in rows} == {4}
  assert len({r["model.dropout"] for r in rows}) == 4
  assert all(0.05 <= r["model.dropout"] <= 0.5 for r in rows)


def test_bad_dropout_is_refused_before_work(tmp_path):
  import flax.linen as nn
  import hptransfer as hpt
  for bad in (1.0, -0.1, float("nan"), True):
    with pytest.raises(configlib.ConfigError, match="model.dropout"):
      configlib.validate(tiny_config(**{"model.dropout": bad}))

  class NoDropout(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(nn.relu(nn.Dense(self.width)(x)))

  with pytest.raises(hpt.models.ModelError, match="takes no `dropout` keyword"):
    hpt.parameterize(NoDropout, jnp.ones((2, 4)), width=16, base_width=8, dropout=0.1)
  p = hpt.parameterize(NoDropout, jnp.ones((2, 4)), width=16, base_width=8)
  assert not p.dropout_on and "dropout" not in p.consts()
  with pytest.raises(S.SweepError, match="model.dropout"):
    S.run(tiny_config(**FAST), S.sweep("model.dropout", [0.1, 1.5]), str(tmp_path),
          progress=False)
  assert not (tmp_path / "results.jsonl").exists()
