"""The coordinate check catches a wrong parameterization."""
import dataclasses

import pytest

from conftest import tiny_config
from hptransfer import coord_check
from hptransfer import parameterization as P

WIDTHS = (64, 128, 256, 512, 1024)
STEPS = 3


def _run(param):
  cfg = tiny_config(**{"parameterization.name": param, "parameterization.base_width": 64,
                       "optimizer.name": "adam", "optimizer.lr": 0.02,
                       "data.name": "stdlib", "data.seq_len": 32,
                       "train.batch_size": 8})
  return coord_check.coord_check(cfg, WIDTHS, steps=STEPS, seeds=(0, 1))


def _growths(df):
  layers = sorted(set(df.layer) - {"loss", "embed"})
  return {layer: coord_check.growth(df, STEPS, layer) for layer in layers}


@pytest.mark.slow
def test_coord_check_sp_blows_up_mup_stays_flat(monkeypatch, tmp_path):
  sp_df = _run("sp")
  sp, mup = _growths(sp_df), _growths(_run("mup"))
  hidden = [l for l in sp if l != "logits"]
  assert len(hidden) == 4  # attention and MLP outputs of two blocks
  assert sp["logits"] >= 4.0, sp
  for layer in hidden:
    assert sp[layer] >= 4.0, (layer, sp)
  for layer, g in mup.items():
    assert 1 / 1.5 <= g <= 1.5, (layer, mup)

  # A deliberately broken muP (hidden-matrix Adam LR left unscaled) fails.
  broken_hidden = dataclasses.replace(P.TABLE["mup"]["hidden"], lr_adam=(0.0, 0.0))
  monkeypatch.setitem(P.TABLE["mup"], "hidden", broken_hidden)
  broken = _growths(_run("mup"))
  assert max(broken.values()) > 1.5, broken
  coord_check.plot(sp_df, str(tmp_path / "cc.png"))
  assert (tmp_path / "cc.png").stat().st_size > 10_000
