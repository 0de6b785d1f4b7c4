"""Where a number was computed: software versions and the device."""
from __future__ import annotations

import importlib.metadata
import platform

import jax


def versions(matmul_dtype: str = "") -> dict[str, str]:
  import flax
  import numpy as np
  import optax
  import orbax.checkpoint as ocp
  from hptransfer import perf
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": importlib.metadata.version("jaxlib"),
          "flax": flax.__version__, "optax": optax.__version__,
          "orbax": ocp.__version__, "numpy": np.__version__,
          "device": str(jax.devices()[0].device_kind), "platform": platform.platform(),
          "cpu_dots": perf.cpu_dots(matmul_dtype) if jax.default_backend() == "cpu" else ""}
