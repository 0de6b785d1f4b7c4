"""u-muP (Blake et al. 2024, "u-muP: The Unit-Scaled Maximal Update
Parametrization", arXiv:2407.17465) as an absolute-scale abc table.

Every matrix is stored at unit scale, N(0, 1), and every dense layer divides
its product by sqrt(fan_in) in the forward pass, so activations start at unit
RMS at any width; the readout divides by fan_in (muP's readout).  Adam's LR
per leaf (exponents on the leaf's own fan-in and fan-out, not on multipliers
of a base shape):

    embedding table   eta / sqrt(fan_out)    (u-muP's embedding LR rule)
    dense input       eta / sqrt(fan_in)     (constant: the fan-in is fixed)
    hidden matrix     eta / sqrt(fan_in)     (x 1/sqrt(fan_in) forward: muP's eta/fan_in)
    readout           eta
    biases, gains     eta
    in block_<i>/     x depth^-1/2           (every optimizer family)

SGD follows the same paper's SGD rule (hidden and embedding eta/sqrt(fan),
biases and gains eta * fan_out, readout eta).  u-muP has no Muon rule.

The model's own ops (``unit_ops``): residual adds that keep a unit-RMS stream
(``parameterization.unit_residual``: residual_mult, residual_attn_ratio) and
an activation scaled to unit RMS on unit Gaussian input (act_mult);
attention logits are ``attn_mult * q.k / d_head``; ``output_mult`` is the
paper's loss-softmax multiplier.  Gradients are JAX's true gradients: the
paper's separate backward scales (which keep intermediate gradients at unit
scale for FP8) change a leaf's gradient by a constant factor at most, which
Adam does not see but through its epsilon, and are not reproduced.  Neither is
its scaling of the attention output by the sequence length.

Knobs u-muP does not have (``fixed``): init_std (init is unit), embed_mult,
zero_init_readout, zero_init_query, alpha (its depth rule is built in),
eps_rule and base_head_dim (there is no base shape).
"""
from hptransfer.parameterization import Parameterization, Rule, register

_N = (0.0, 0.0)
_UNIT_DENSE = Rule(init=_N, forward=(-0.5, 0.0), lr_sgd=(-0.5, 0.0), lr_adam=(-0.5, 0.0))

register(Parameterization(
    name="umup", attention="unit", scale="absolute", unit_ops=True, depth_lr=-0.5,
    doc="unit-scaled muP (Blake et al. 2024)",
    rules={"input": _UNIT_DENSE,
           "hidden": _UNIT_DENSE,
           "output": Rule(init=_N, forward=(-1.0, 0.0), lr_sgd=_N, lr_adam=_N),
           "vector": Rule(init=_N, forward=_N, lr_sgd=(0.0, 1.0), lr_adam=_N),
           "scalar": Rule(init=_N, forward=_N, lr_sgd=_N, lr_adam=_N)},
    lookup=Rule(init=_N, forward=_N, lr_sgd=(0.0, -0.5), lr_adam=(0.0, -0.5)),
    fixed={"init_std": 1.0, "embed_mult": 1.0, "zero_init_readout": False,
           "zero_init_query": False, "alpha": 0.0, "eps_rule": "none",
           "base_head_dim": 0}))
