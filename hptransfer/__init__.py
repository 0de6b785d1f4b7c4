"""hptransfer: hyperparameter transfer across model scales (muP and its
successors) in JAX.

The Python API, for any Flax model::

    import hptransfer as hpt
    p = hpt.parameterize(make_model, example_input, width=512, base_width=64,
                         parameterization="mup", optimizer="adamw")
    params = p.init(jax.random.key(0))
    tx = p.optimizer(lr=2**-7, weight_decay=0.1, schedule="cosine", steps=1000)
    logits = p.apply(params, x)
    print(p.describe())

The command lines (``python -m hptransfer.train|sweep|describe|coord_check``)
take ``--config.model.module=my_pkg.models:make_model`` for a model of your
own.  Extension points are registries: ``hptransfer.models.register``,
``hptransfer.optim.register``, ``hptransfer.parameterization.register``,
``hptransfer.tasks.register``.
"""
from hptransfer.api import Parameterized, Rows, parameterize
from hptransfer.coord_check import coord_check_api as coordinate_check
from hptransfer.models import ModelError
from hptransfer.optim import OptimizerError
from hptransfer.parameterization import ParameterizationError

__version__ = "0.2.0"

# The grid language is hptransfer.grid (sweep, product, zip), re-exported by
# hptransfer.sweep; it is not re-exported here, where ``sweep`` would shadow
# the ``hptransfer.sweep`` module (and coordinate_check is named so that it
# does not shadow ``hptransfer.coord_check``).
__all__ = ["parameterize", "Parameterized", "Rows", "coordinate_check",
           "ModelError", "OptimizerError", "ParameterizationError", "__version__"]
