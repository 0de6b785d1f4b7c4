"""Tasks: classification on the packaged digits, and the checks that tie a
model to its task."""
import numpy as np
import pytest

from conftest import set_overrides, tiny_config
from hptransfer import build as build_lib
from hptransfer import configlib
from hptransfer import data as data_lib
from hptransfer import train as train_lib


def _cls_config(**overrides):
  from configs import classifier
  cfg = classifier.get_config()
  cfg.model.width = 32
  cfg.parameterization.base_width = 16
  cfg.train.batch_size = 16
  cfg.train.steps = 60
  cfg.train.eval_every = 60
  cfg.train.eval_batches = 23          # 23 x 16 >= 360: the whole held-out split
  cfg.train.checkpoint_every = 60
  cfg.train.log_every = 20
  cfg.optimizer.lr = 2.0 ** -6
  return set_overrides(cfg, overrides)


def test_digits_ship_with_the_install_and_split_deterministically():
  ds = data_lib.load_digits()
  assert (len(ds.y_train), len(ds.y_val)) == (1437, 360)
  assert ds.input_shape == (8, 8, 1) and ds.num_classes == 10
  assert set(np.unique(ds.y_val)) == set(range(10))
  assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std()) - 1) < 1e-4
  x1, y1 = ds.batch(0, 3, 16)
  x2, y2 = ds.batch(0, 3, 16)
  np.testing.assert_array_equal(x1, x2)
  assert not np.array_equal(ds.batch(0, 4, 16)[1], y1)
  # Validation batches walk the split in order: 23 of 16 see every image.
  seen = np.concatenate([np.where((ds.x_val == ds.batch(0, i, 16, "val")[0][:, None]).all(
      axis=(2, 3, 4)))[1] for i in range(23)])
  assert set(seen) == set(range(360))


def test_a_mixer_learns_the_digits(tmp_path):
  s = train_lib.train(_cls_config(), str(tmp_path), progress=False)
  assert not s["diverged"] and s["tokens"] == 60 * 16          # one prediction a row
  assert s["final_eval_accuracy"] > 0.6                         # chance: 0.1
  assert s["final_eval_loss"] < np.log(10) - 1.0


def test_roles_of_the_mixer():
  roles = {r["path"]: r["role"] for r in build_lib.build(_cls_config()).describe()}
  assert roles["patch_embed/kernel"] == "input"
  assert roles["pos_embed/embedding"] == "input"
  assert roles["block_0/channel_in/kernel"] == "hidden"
  assert roles["block_0/token_in/kernel"] == "scalar"     # patches x token hidden: fixed
  assert roles["readout/kernel"] == "output"
  assert roles["block_1/norm2/scale"] == "vector"


@pytest.mark.parametrize("overrides,match", [
    ({"task.name": "segmentation"}, r"task.name='segmentation' is not one of classification, lm"),
    ({"data.name": "stdlib"}, r"data.name='stdlib' is not one of digits"),
    ({"model.name": "transformer"}, r"model.name='transformer' is a model for task\(s\) \['lm'\]"),
    ({"model.patch": 3}, r"model.patch=3 does not divide"),
    ({"model.norm": "batchnorm"}, r"model.norm='batchnorm' is not one of"),
])
def test_a_config_that_does_not_fit_its_task_names_the_field(overrides, match):
  with pytest.raises((configlib.ConfigError, ValueError), match=match):
    build_lib.build(_cls_config(**overrides))


def test_a_language_model_on_the_classification_task_is_refused():
  cfg = tiny_config(**{"model.name": "mixer"})
  with pytest.raises(configlib.ConfigError, match=r"'mixer' is a model for task\(s\) \['classification'\]"):
    build_lib.build(cfg)


def test_classification_sweeps_group_and_record_accuracy(tmp_path):
  from hptransfer import sweep as S
  cfg = _cls_config(**{"train.steps": 10, "train.eval_every": 10,
                       "train.checkpoint_every": 5, "train.log_every": 5})
  rows = S.run(cfg, S.product(S.sweep("parameterization.name", ["sp", "mup"]),
                              S.sweep("optimizer.lr", [1e-3, 1e-2])),
               str(tmp_path), progress=False)
  assert len({r["group_id"] for r in rows}) == 1 and len(rows) == 4
  for r in rows:
    assert r["task.name"] == "classification"
    assert 0.0 <= r["final_eval_accuracy"] <= 1.0
    assert r["tokens"] == 10 * 16
  assert len({r["final_train_loss"] for r in rows}) == 4
