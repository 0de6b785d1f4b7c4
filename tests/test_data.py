"""Datasets: the embedded corpus, token files, the synthetic task."""
import zlib

import numpy as np
import pytest

from conftest import tiny_config
from hptransfer import data as data_lib


def test_stdlib_corpus_split_by_file_and_deterministic():
  root, files = data_lib.stdlib_files()
  assert len(files) > 100
  rels = [str(f.relative_to(root)) for f in files]
  assert rels == sorted(rels)
  assert not any(part in ("test", "tests", "site-packages")
                 for r in rels for part in r.split("/"))
  ds = data_lib.load_stdlib()
  val_files = [f for f, r in zip(files, rels) if zlib.crc32(r.encode()) % 10 == 0]
  assert len(ds.val) == sum(f.stat().st_size + 1 for f in val_files)
  assert len(ds.train) + len(ds.val) == sum(f.stat().st_size + 1 for f in files)
  assert 0.03 < len(ds.val) / (len(ds.train) + len(ds.val)) < 0.25
  assert len(ds.sha256) == 64 and ds.vocab_size == 256
  a = ds.batch(0, 7, 4, 32)
  assert a.shape == (4, 33) and a.dtype == np.int32
  np.testing.assert_array_equal(a, ds.batch(0, 7, 4, 32))       # pure in (seed, step)
  assert not np.array_equal(a, ds.batch(0, 8, 4, 32))
  assert not np.array_equal(a, ds.batch(1, 7, 4, 32))
  assert not np.array_equal(a, ds.batch(0, 7, 4, 32, "val"))
  # It is Python source: mostly printable ASCII.
  assert np.mean((a >= 9) & (a < 127)) > 0.95


def test_token_files_memmapped(tmp_path):
  ids = np.arange(5000, dtype=np.uint16) % 1000
  ids.tofile(tmp_path / "train.bin")
  ids[::-1].copy().tofile(tmp_path / "val.bin")
  cfg = tiny_config(**{"data.name": "tokens", "data.train_path": str(tmp_path / "train.bin"),
                       "data.val_path": str(tmp_path / "val.bin"),
                       "data.vocab_size": 1000})
  ds = data_lib.get_dataset(cfg.data)
  assert isinstance(ds.train, np.memmap)
  b = ds.batch(3, 0, 2, 10)
  # Consecutive ids from the file (mod 1000, as written).
  assert np.all((np.diff(b, axis=1) % 1000) == 1)
  cfg.data.token_dtype = "uint8"
  with pytest.raises(data_lib.DataError, match="data.token_dtype"):
    data_lib.get_dataset(cfg.data)
  cfg.data.token_dtype = "uint16"
  cfg.data.val_path = str(tmp_path / "missing.bin")
  with pytest.raises(data_lib.DataError, match="data.val_path"):
    data_lib.get_dataset(cfg.data)


def test_synthetic_markov_chain_follows_its_transition_table():
  ds = data_lib.make_synthetic(8, seed=0)
  b = ds.batch(0, 0, 512, 64)
  assert b.min() >= 0 and b.max() < 8
  counts = np.zeros((8, 8))
  np.add.at(counts, (b[:, :-1].ravel(), b[:, 1:].ravel()), 1)
  empirical = counts / counts.sum(1, keepdims=True)
  probs = np.diff(np.concatenate([np.zeros((8, 1)), ds.markov_cdf], axis=1), axis=1)
  assert np.abs(empirical - probs).max() < 0.05
