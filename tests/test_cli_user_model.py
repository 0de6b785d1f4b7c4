"""A model from outside the package through every command line:
``--config.model.module=mymodels:make_model``."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

MODELS = textwrap.dedent('''
    import flax.linen as nn

    class TinyLM(nn.Module):
      width: int
      vocab_size: int

      @nn.compact
      def __call__(self, tokens, branch_mult=1.0):
        x = nn.Embed(self.vocab_size, self.width, name="embed")(tokens)
        h = nn.relu(nn.Dense(2 * self.width, name="block_0_up")(x))
        x = x + branch_mult * nn.Dense(self.width, name="block_0_down")(h)
        return nn.Dense(self.vocab_size, name="head")(nn.LayerNorm(name="norm")(x))

    def make_model(width, vocab_size):
      return TinyLM(width=width, vocab_size=vocab_size)

    def no_width(size, vocab_size):
      return TinyLM(width=size, vocab_size=vocab_size)

    def wrong_output(width):
      return TinyLM(width=width, vocab_size=7)
''')

TINY = ["--config.model.width=64", "--config.parameterization.base_width=32",
        "--config.data.name=synthetic", "--config.data.vocab_size=32",
        "--config.data.seq_len=16", "--config.train.batch_size=4", "--config.train.steps=8",
        "--config.train.eval_every=8", "--config.train.eval_batches=2",
        "--config.train.checkpoint_every=4", "--config.train.log_every=4"]

SWEEP = textwrap.dedent('''
    from configs import transformer
    from hptransfer.sweep import product, sweep

    def get_config():
      c = transformer.get_config()
      c.model.module = "mymodels:make_model"
      c.parameterization.base_width = 32
      c.data.name = "synthetic"
      c.data.vocab_size = 32
      c.data.seq_len = 16
      c.train.batch_size = 4
      c.train.steps = 8
      c.train.eval_every = 8
      c.train.eval_batches = 2
      c.train.checkpoint_every = 4
      c.train.log_every = 4
      return c

    def get_sweep():
      return product(sweep("parameterization.name", ["sp", "mup"]),
                     sweep("model.width", [32, 64]), sweep("optimizer.lr", [1e-3, 1e-2]))
''')


@pytest.fixture
def user_env(tmp_path):
  pkg = tmp_path / "pkgs"
  pkg.mkdir()
  (pkg / "mymodels.py").write_text(MODELS)
  env = {**os.environ, "PYTHONPATH": f"{pkg}{os.pathsep}{ROOT}",
         "HPTRANSFER_JAX_CACHE": str(tmp_path / "cache")}
  return env


def _run(env, module, *args):
  return subprocess.run([sys.executable, "-m", f"hptransfer.{module}", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)


def _config(module="mymodels:make_model"):
  return ["--config", os.path.join(ROOT, "configs/transformer.py"),
          f"--config.model.module={module}"]


@pytest.mark.slow
def test_describe_train_sweep_and_coord_check_take_a_user_model(user_env, tmp_path):
  out = _run(user_env, "describe", *_config(), *TINY, "--format", "json")
  assert out.returncode == 0, out.stderr[-2000:]
  roles = {r["path"]: r["role"] for r in json.loads(out.stdout)}
  assert roles == {"embed/embedding": "input", "block_0_up/kernel": "hidden",
                   "block_0_up/bias": "vector", "block_0_down/kernel": "hidden",
                   "block_0_down/bias": "vector", "norm/scale": "vector",
                   "norm/bias": "vector", "head/kernel": "output", "head/bias": "scalar"}

  work = tmp_path / "train"
  out = _run(user_env, "train", *_config(), *TINY, "--workdir", str(work))
  assert out.returncode == 0, out.stderr[-2000:]
  summary = json.loads((work / "summary.json").read_text())
  assert summary["steps"] == 8 and not summary["diverged"]
  assert 0 < summary["final_train_loss"] < 2 * 3.47      # log(32) = 3.47 at init
  assert json.loads((work / "config.json").read_text())["config"]["model"]["module"] == \
      "mymodels:make_model"

  sweep_file = tmp_path / "user_sweep.py"
  sweep_file.write_text(SWEEP)
  out = _run(user_env, "sweep", "--config", str(sweep_file), "--workdir", str(tmp_path / "s"))
  assert out.returncode == 0, out.stderr[-2000:]
  rows = [json.loads(line) for line in open(tmp_path / "s" / "results.jsonl")]
  assert len(rows) == 8 and {r["model.module"] for r in rows} == {"mymodels:make_model"}
  by = {(r["parameterization.name"], r["model.width"], r["optimizer.lr"]): r for r in rows}
  # At the base width the two parameterizations are the same run; wider, not.
  assert by[("sp", 32, 1e-2)]["final_train_loss"] == by[("mup", 32, 1e-2)]["final_train_loss"]
  assert by[("sp", 64, 1e-2)]["final_train_loss"] != by[("mup", 64, 1e-2)]["final_train_loss"]

  cc = tmp_path / "cc"
  out = _run(user_env, "coord_check", *_config(), *TINY, "--workdir", str(cc),
             "--widths", "32,64,128", "--steps", "1", "--seeds", "1")
  assert out.returncode == 0, out.stderr[-2000:]
  growth = json.loads((cc / "coord_check.json").read_text())["growth_at_last_step"]
  assert {"embed", "block_0_down", "head"} <= set(growth)


@pytest.mark.slow
@pytest.mark.parametrize("module,message", [
    ("nomodule.models:make_model", "cannot import 'nomodule.models'"),
    ("mymodels:make_modle", r"has no .make_modle. \(its callables: .*make_model"),
    ("mymodels:no_width", "no width knob"),
    ("mymodels:wrong_output", r"needs logits \[batch, seq_len, vocab_size\] = \(2, 16, 32\)"),
])
def test_a_bad_user_model_is_an_error_before_any_work(user_env, tmp_path, module, message):
  import re
  work = tmp_path / "w"
  out = _run(user_env, "train", *_config(module), *TINY, "--workdir", str(work))
  assert out.returncode == 2, out.stderr[-2000:]
  assert re.search(message, out.stderr), out.stderr
  assert "Traceback" not in out.stderr
  assert not work.exists()
