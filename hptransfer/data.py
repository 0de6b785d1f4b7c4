"""Datasets.  A batch is a pure function of (data seed, step, split).

``stdlib``     the embedded default: a byte-level corpus made of the Python
               standard library's own ``.py`` sources on the running interpreter
               (sorted, ``test``/``tests``/``idle_test``/``site-packages`` left
               out), split into train/validation by file (a file goes to
               validation when the crc32 of its relative path is 0 mod 10).
               Every machine with Python has it; its sha256 goes into every
               output because it differs between Python versions.
``tokens``     flat binary token files as nanoGPT writes them (uint16 or
               uint32 ids), memory-mapped.
``synthetic``  tokens from a fixed random first-order Markov chain: cheap, with
               a known entropy floor, for unit tests.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import pathlib
import sysconfig
import zlib

import numpy as np

DATASETS = ("stdlib", "tokens", "synthetic")
_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


class DataError(ValueError):
  pass


@dataclasses.dataclass
class Dataset:
  name: str
  vocab_size: int
  sha256: str
  train: np.ndarray | None = None   # flat token arrays (may be memmaps)
  val: np.ndarray | None = None
  markov_cdf: np.ndarray | None = None  # synthetic only
  check_ids: bool = False   # token files: every batch's ids checked against vocab_size

  def batch(self, seed: int, step: int, batch_size: int, seq_len: int,
            split: str = "train") -> np.ndarray:
    """(batch_size, seq_len + 1) int32 tokens; inputs are [:, :-1], targets [:, 1:]."""
    split_id = {"train": 0, "val": 1}[split]
    rng = np.random.default_rng([seed, split_id, step])
    if self.markov_cdf is not None:
      return _markov_batch(self.markov_cdf, rng, batch_size, seq_len + 1)
    data = self.train if split == "train" else self.val
    n = len(data) - seq_len - 1
    if n <= 0:
      raise DataError(f"the {split} split of {self.name!r} has {len(data)} tokens, "
                      f"fewer than data.seq_len + 1 = {seq_len + 1}")
    starts = rng.integers(0, n, size=batch_size)
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    out = np.asarray(data[idx], dtype=np.int32)
    if self.check_ids and out.max() >= self.vocab_size:
      raise DataError(f"step {step} of the {split} split drew token id {int(out.max())}, not "
                      f"below data.vocab_size={self.vocab_size}: the token file holds ids "
                      "beyond the vocabulary; set --config.data.vocab_size to the tokenizer's")
    return out


def _markov_batch(cdf, rng, batch_size, length):
  V = cdf.shape[0]
  out = np.empty((batch_size, length), np.int32)
  out[:, 0] = rng.integers(0, V, size=batch_size)
  u = rng.random((batch_size, length - 1))
  for t in range(1, length):
    out[:, t] = (cdf[out[:, t - 1]] < u[:, t - 1, None]).sum(-1)
  np.minimum(out, V - 1, out=out)
  return out


def stdlib_files() -> tuple[pathlib.Path, list[pathlib.Path]]:
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files = []
  # os.walk, pruned: an rglob walked every file under site-packages too (50k
  # here, 0.4 s of each run's setup) before the filter dropped them.
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS]
    files += [pathlib.Path(dirpath, n) for n in filenames
              if n.endswith(".py") and not n.startswith("test_")]
  return root, sorted(files)


@functools.lru_cache(maxsize=2)
def load_stdlib(val_mod: int = 10) -> Dataset:
  root, files = stdlib_files()
  if not files:
    raise DataError(f"found no .py files under the standard library at {root}")
  train, val = [], []
  h = hashlib.sha256()
  for f in files:
    rel = str(f.relative_to(root)).encode()
    data = f.read_bytes() + b"\n"
    h.update(rel + b"\0" + data)
    (val if zlib.crc32(rel) % val_mod == 0 else train).append(data)
  return Dataset(
      name="stdlib", vocab_size=256, sha256=h.hexdigest(),
      train=np.frombuffer(b"".join(train), np.uint8),
      val=np.frombuffer(b"".join(val), np.uint8))


_SHA_CACHE: dict = {}


def _file_sha256(path: str) -> str:
  """sha256 of a file, computed once per (path, size, mtime) in a process."""
  st = os.stat(path)
  key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
  if key not in _SHA_CACHE:
    _SHA_CACHE[key] = _sha256_of(path)
  return _SHA_CACHE[key]


def _sha256_of(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 24), b""):
      h.update(chunk)
  return h.hexdigest()


def load_tokens(dcfg) -> Dataset:
  dtype = {"uint16": np.uint16, "uint32": np.uint32}.get(dcfg.token_dtype)
  if dtype is None:
    raise DataError(f"data.token_dtype={dcfg.token_dtype!r} must be 'uint16' or "
                    "'uint32' (the width of the ids in the token file)")
  if not dcfg.get("vocab_size") or int(dcfg.vocab_size) < 2:
    raise DataError(f"data.vocab_size={dcfg.get('vocab_size')!r} must be set to the token "
                    "files' vocabulary (e.g. --config.data.vocab_size=50304)")
  vocab = int(dcfg.vocab_size)
  itemsize = np.dtype(dtype).itemsize
  arrays, shas = {}, []
  for field in ("train_path", "val_path"):
    path = os.path.expanduser(dcfg.get(field) or "")
    if not path or not os.path.isfile(path):
      raise DataError(f"data.{field}={path!r}: no such token file; set "
                      f"--config.data.{field}=/path/to/{field.split('_')[0]}.bin")
    size = os.path.getsize(path)
    if size == 0:
      raise DataError(f"data.{field}={path!r} is empty; point it at a token file")
    if size % itemsize:
      raise DataError(f"data.{field}={path!r} has {size} bytes, not a multiple of "
                      f"{itemsize} (data.token_dtype={dcfg.token_dtype!r}): a truncated "
                      "file, or the wrong data.token_dtype")
    arr = np.memmap(path, dtype=dtype, mode="r")
    # A sample of the ids (every batch is checked too, in Dataset.batch).
    sample = np.asarray(arr[:: max(1, len(arr) // 100_000)])
    if sample.max() >= vocab:
      raise DataError(f"data.{field}={path!r} holds token id {int(sample.max())}, not below "
                      f"data.vocab_size={vocab}: set --config.data.vocab_size to the "
                      "tokenizer's vocabulary size")
    arrays[field] = arr
    shas.append(_file_sha256(path))
  return Dataset(name="tokens", vocab_size=vocab,
                 sha256=hashlib.sha256("".join(shas).encode()).hexdigest(),
                 train=arrays["train_path"], val=arrays["val_path"], check_ids=True)


def check_length(ds: "Dataset", seq_len: int) -> None:
  """Both splits hold more than ``seq_len + 1`` tokens (a batch needs them)."""
  if ds.markov_cdf is not None:
    return
  for split, data in (("train", ds.train), ("val", ds.val)):
    if len(data) <= seq_len + 1:
      raise DataError(f"the {split} split of data.name={ds.name!r} has {len(data)} tokens, "
                      f"too few for data.seq_len={seq_len} (a sequence needs seq_len + 1): "
                      "use a shorter --config.data.seq_len or more data")


def make_synthetic(vocab_size: int, seed: int = 0, concentration: float = 0.3) -> Dataset:
  rng = np.random.default_rng(seed)
  probs = rng.dirichlet(np.full(vocab_size, concentration), size=vocab_size)
  cdf = np.cumsum(probs, axis=-1)
  sha = hashlib.sha256(probs.tobytes()).hexdigest()
  return Dataset(name="synthetic", vocab_size=vocab_size, sha256=sha, markov_cdf=cdf)


def vocab_size(dcfg) -> int:
  """The vocabulary of a data config without loading the data."""
  if dcfg.name == "stdlib":
    return 256
  if dcfg.name in ("tokens", "synthetic"):
    if not dcfg.get("vocab_size"):
      raise DataError(f"data.vocab_size must be set when data.name={dcfg.name!r}")
    return int(dcfg.vocab_size)
  raise DataError(f"data.name={dcfg.name!r} is not one of {', '.join(DATASETS)}")


def get_dataset(dcfg) -> Dataset:
  if dcfg.name == "stdlib":
    return load_stdlib()
  if dcfg.name == "tokens":
    return load_tokens(dcfg)
  if dcfg.name == "synthetic":
    return make_synthetic(vocab_size(dcfg), seed=dcfg.get("synthetic_seed", 0))
  raise DataError(f"data.name={dcfg.name!r} is not one of {', '.join(DATASETS)}")


# ----------------------------------------------------------------------------
# Labelled examples (classification).

IMAGE_DATASETS = ("digits",)


@dataclasses.dataclass
class LabelledDataset:
  """Examples ``x`` [n, ...] float32 and labels ``y`` [n] int32 per split."""
  name: str
  num_classes: int
  sha256: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.x_train.shape[1:])

  def batch(self, seed: int, step: int, batch_size: int, split: str = "train"):
    """(x [B, ...], y [B]).  Training batches draw examples with replacement,
    a pure function of (seed, step); validation batches walk the split in
    order, wrapping, so ``ceil(n / B)`` of them see every example."""
    if split == "train":
      rng = np.random.default_rng([seed, 0, step])
      idx = rng.integers(0, len(self.y_train), size=batch_size)
      return self.x_train[idx], self.y_train[idx]
    n = len(self.y_val)
    idx = (step * batch_size + np.arange(batch_size)) % n
    return self.x_val[idx], self.y_val[idx]


def _sklearn_data_file(name: str) -> str:
  """A data file that ships inside scikit-learn, found without importing it."""
  import importlib.util
  spec = importlib.util.find_spec("sklearn")
  if spec is None or not spec.origin:
    raise DataError("data.name='digits' reads scikit-learn's packaged digits; "
                    "pip install scikit-learn (it is in requirements.txt)")
  path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", name)
  if not os.path.isfile(path):
    raise DataError(f"scikit-learn at {os.path.dirname(spec.origin)} has no {name}")
  return path


@functools.lru_cache(maxsize=2)
def load_digits(val_mod: int = 5) -> LabelledDataset:
  """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes; UCI
  optdigits test set), read from the CSV inside the installed package, so
  every machine that installed the requirements has it.  Example i goes to
  validation when i % 5 == 0 (360 images), the rest to training (1,437).
  Pixels 0..16 are standardised with the training split's mean and std."""
  import gzip
  path = _sklearn_data_file("digits.csv.gz")
  with open(path, "rb") as f:
    raw = f.read()
  table = np.loadtxt(io.StringIO(gzip.decompress(raw).decode()), delimiter=",")
  x = table[:, :-1].astype(np.float32).reshape(-1, 8, 8, 1)
  y = table[:, -1].astype(np.int32)
  val = np.arange(len(y)) % val_mod == 0
  mean, std = x[~val].mean(), x[~val].std()
  x = (x - mean) / std
  return LabelledDataset(name="digits", num_classes=10,
                         sha256=hashlib.sha256(raw).hexdigest(),
                         x_train=x[~val], y_train=y[~val], x_val=x[val], y_val=y[val])


def get_labelled(dcfg) -> LabelledDataset:
  if dcfg.name == "digits":
    return load_digits()
  raise DataError(f"data.name={dcfg.name!r} is not a classification data set; use one of "
                  f"{', '.join(IMAGE_DATASETS)} (--config.data.name=digits)")
