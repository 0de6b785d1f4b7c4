"""Every figure function renders on tiny data (the content is for the reader;
this checks that nothing crashes and a picture is written)."""
import numpy as np
import pandas as pd
import pytest

from analysis import fit


def _df(groups=("sp", "mup"), widths=(32, 64, 128), seeds=2):
  rng = np.random.default_rng(0)
  rows = []
  for g in groups:
    for w in widths:
      for x in np.arange(-10.0, -3.0, 1.0):
        for s in range(seeds):
          loss = 2.0 + 0.05 * (x + 7 + (np.log2(w) - 5) * (g == "sp")) ** 2 + rng.normal(0, 0.01)
          rows.append({"parameterization.name": g, "model.width": w, "optimizer.lr": 2.0 ** x,
                       "seed": s, "final_train_loss": np.inf if x == -3.0 and w == 128 else loss,
                       "diverged": bool(x == -4.0 and w == 128)})
  return pd.DataFrame(rows)


def test_fit_figures_render(tmp_path):
  df = _df()
  curves, optima, rules = fit.analyze(df, ["model.width"], "optimizer.lr", "final_train_loss",
                                      "parameterization.name", {"model.width": 1024},
                                      n_boot=30, warn=lambda m: None)
  fit.plot_loss_vs_hp(curves, optima, str(tmp_path / "a.png"), "optimizer.lr",
                      "final_train_loss", "quadratic", 0.0025, units="nats/byte",
                      scale_cols=("model.width",))
  fit.plot_optimum_vs_scale(optima, rules, str(tmp_path / "b.png"), "optimizer.lr",
                            "model.width", "quadratic", {"model.width": 1024})
  fit.plot_parity(optima, rules, str(tmp_path / "c.png"), "optimizer.lr", "quadratic")
  for name in "abc":
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_coord_check_figures_render(tmp_path):
  from experiments import coord_check_fig
  from hptransfer import coord_check
  rows = [{"width": w, "seed": s, "t": t, "layer": layer, "mean_abs": float(w) ** (0.5 * t)}
          for w in (32, 64) for s in (0, 1) for t in (0, 1, 2)
          for layer in ("embed", "block_0/mlp_out", "logits", "loss")]
  df = pd.DataFrame(rows)
  coord_check.plot(df, str(tmp_path / "cc.png"), "sp adam")
  coord_check_fig.plot_grid({"sp adam": df, "mup adam": df}, str(tmp_path / "grid.png"))
  assert (tmp_path / "cc.png").stat().st_size > 10_000
  assert (tmp_path / "grid.png").stat().st_size > 10_000


@pytest.mark.parametrize("with_targets", [True, False])
def test_demo_figure_renders(tmp_path, with_targets):
  from experiments import mutransfer_demo
  df = _df(widths=(32, 64), seeds=1)
  res = {"mup_predicted_lr": 2.0 ** -7, "mup_predicted_lr_ci": [2.0 ** -8, 2.0 ** -6],
         "sp_carried_lr": 2.0 ** -6, "target_width": 256, "settings": {"base": 32}}
  curves = {p: {"train": [[s, 3.0 - 0.001 * s] for s in range(0, 100, 10)] if with_targets
                else []} for p in ("mup", "sp")}
  mutransfer_demo.plot(df, curves, res, str(tmp_path / "demo.png"))
  assert (tmp_path / "demo.png").stat().st_size > 10_000
