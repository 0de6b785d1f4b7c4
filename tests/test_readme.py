"""The README's API example is what a user copies: it must run as written,
from a directory outside the repository, and stay at most 15 lines."""
import os
import re
import subprocess
import sys

from conftest import ROOT


def _example() -> str:
  text = open(os.path.join(ROOT, "README.md")).read()
  m = re.search(r"<!-- api-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
  assert m, "the README lost its marked API example"
  return m.group(1)


def test_readme_api_example_runs_from_another_directory(tmp_path):
  code = _example()
  assert len(code.strip().splitlines()) <= 15
  (tmp_path / "example.py").write_text(code)
  env = {**os.environ, "PYTHONPATH": ROOT, "HPTRANSFER_JAX_CACHE": "off"}
  out = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = {}
  for line in out.stdout.splitlines():
    cells = line.split()
    if cells and "/" in cells[0]:
      rows[cells[0]] = cells
  assert rows["readout/kernel"][2] == "output" and rows["block_0/kernel"][2] == "hidden"
  assert float(rows["readout/kernel"][6]) == 64 / 1024          # forward multiplier
  loss = float(re.search(r"loss after 100 steps: ([0-9.]+)", out.stdout).group(1))
  assert loss < 0.5                                            # log(10) = 2.30 at init
