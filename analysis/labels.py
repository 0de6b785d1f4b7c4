"""Words for a reader who has not read the code: column names as axis labels
and legend entries, with units."""
from __future__ import annotations

NAMES = {
    "optimizer.lr": "learning rate", "optimizer.weight_decay": "weight decay",
    "optimizer.b1": "Adam beta1", "optimizer.b2": "Adam beta2", "optimizer.eps": "Adam epsilon",
    "optimizer.warmup_steps": "warmup steps",
    "model.width": "width", "model.depth": "depth", "train.steps": "training steps",
    "train.batch_size": "batch size (sequences)", "tokens": "training tokens",
    "token_budget": "token budget D (tokens)",
    "num_params_embedding_free": "non-embedding parameters N",
    "num_params": "parameters",
    "timescale": "decay timescale tau (fraction of training)",
    "warmup_fraction": "warmup (fraction of training)",
    "parameterization.name": "parameterization", "parameterization.alpha": "depth alpha",
    "parameterization.output_mult": "output multiplier",
    "parameterization.init_std": "init std",
    "final_train_loss": "final train loss", "final_eval_loss": "final held-out loss",
    "best_eval_loss": "best held-out loss", "best_train_loss": "best train loss",
}
GROUPS = {"sp": "SP", "mup": "muP", "ntk": "NTK", "mf": "mean-field"}


def name(col: str) -> str:
  """'optimizer.lr' -> 'learning rate'; unknown columns lose their section."""
  return NAMES.get(col, col.split(".")[-1].replace("_", " "))


def group(g) -> str:
  if isinstance(g, str):
    return GROUPS.get(g, g)
  return f"{g:g}" if isinstance(g, float) else str(g)


def scale_value(col: str, v) -> str:
  """'width 256', 'depth 8', '2e+06 training tokens'."""
  n = name(col)
  return f"{n} {v:g}" if isinstance(v, (int, float)) else f"{n} {v}"


def loss_label(metric: str, units: str = "nats") -> str:
  return f"{name(metric)} ({units})" if "loss" in metric else name(metric)


def log2_label(col: str) -> str:
  return f"log2 {name(col)}"
