"""What the parameterization does to each parameter of a model.

    python -m hptransfer.describe --config configs/transformer.py \
        [--config.model.width=512 ...] [--config.model.module=my_pkg.models:make_model] \
        [--format table|json|csv]

One row per parameter leaf: ``path, shape, role, fan_in_mult, fan_out_mult,
init_std, forward_mult, lr_mult, wd_mult, eps_mult``.  ``init_std`` is the std
of the stored leaf at init (0 for constant-initialised biases and gains),
``forward_mult`` what the model multiplies it by, ``lr_mult`` / ``wd_mult`` /
``eps_mult`` what multiply the global learning rate, weight decay and Adam
epsilon for that leaf under the configured optimizer (``eps_mult`` is null for
optimizers without an epsilon).  The table format adds a header with the
model-level knobs (attention-logit scale, residual branch multiplier).
In Python: ``print(hptransfer.parameterize(...).describe())``.
"""
from __future__ import annotations

import csv
import io
import json

from hptransfer.parameterization import DESCRIBE_KEYS


def _fmt(v) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.6g}"
  if isinstance(v, list):
    return "x".join(map(str, v))
  return str(v)


def table(rows) -> str:
  """The rows as an aligned text table."""
  cells = [list(DESCRIBE_KEYS)] + [[_fmt(r[k]) for k in DESCRIBE_KEYS] for r in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(DESCRIBE_KEYS))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def render(p, fmt: str = "table") -> str:
  """``p``: a ``Parameterized`` (``hptransfer.parameterize`` or ``build``)."""
  rows = p.describe()
  if fmt == "json":
    return json.dumps(list(rows), indent=1)
  if fmt == "csv":
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=DESCRIBE_KEYS)
    w.writeheader()
    for r in rows:
      w.writerow({k: _fmt(v) if k == "shape" else v for k, v in r.items()})
    return buf.getvalue()
  return str(rows)


def main(argv):
  del argv
  from absl import flags
  from hptransfer import build as build_lib
  from hptransfer import cli
  FLAGS = flags.FLAGS
  cli.quiet_logs()
  with cli.user_errors():
    print(render(build_lib.build(FLAGS.config), FLAGS.format))


def run():
  from absl import flags
  from hptransfer import cli
  cli.config_flag()
  flags.DEFINE_enum("format", "table", ["table", "json", "csv"], "output format")
  cli.run_app(main, __doc__)


if __name__ == "__main__":
  run()
