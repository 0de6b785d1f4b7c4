"""SP, muP, NTK and mean-field as abc tables (Everett et al. 2024).

Exponents on (m_in, m_out) per role; ``lr_sgd`` / ``lr_adam`` are the LR
columns of the two optimizer families.  Input layers have a fixed fan-in, so
their m_in exponents never matter; they are written as for any matrix.

muP follows microsoft/mup exactly (MuReadout + MuAdam / MuSGD): the readout is
stored at the base std and divided by m_in in the forward pass.  NTK uses a
global learning rate (Jacot et al. 2018).  Mean-field (MF) uses the abc of
Everett et al. (hidden a=1/2, readout a=1, b=0) with the per-layer learning
rates that their symmetry maps onto muP, so MF and muP train the *same*
function up to Adam's epsilon; a test checks that.
"""
from hptransfer.parameterization import Parameterization, Rule, register

_NONE = (0.0, 0.0)
_SP_MATRIX = Rule(init=(-0.5, 0.0), forward=_NONE, lr_sgd=_NONE, lr_adam=_NONE)
_CONST = Rule(init=_NONE, forward=_NONE, lr_sgd=_NONE, lr_adam=_NONE)
_VECTOR_MUP = Rule(init=_NONE, forward=_NONE, lr_sgd=(0.0, 1.0), lr_adam=_NONE)
_INPUT_MUP = Rule(init=(-0.5, 0.0), forward=_NONE, lr_sgd=(0.0, 1.0), lr_adam=_NONE)
_OUTPUT_MUP = Rule(init=_NONE, forward=(-1.0, 0.0), lr_sgd=(1.0, 0.0), lr_adam=_NONE)
_NTK_MATRIX = Rule(init=_NONE, forward=(-0.5, 0.0), lr_sgd=_NONE, lr_adam=_NONE,
                   lr_muon=_NONE, lr_muon_spectral=_NONE)
# Muon (hidden matrices; hptransfer/optim/muon.py).  RMS-matched Muon's update
# has spectral norm ~ 0.2 sqrt(max fan) x LR, growing as sqrt(m): muP divides
# the LR by sqrt(m_in).  Spectral Muon's is sqrt(fan_out/fan_in) x LR, already
# muP's size: no correction.  SP and NTK correct nothing.  MF's hidden forward
# multiplier m^-1/2 is muP's up to the abc symmetry, which for a scale-invariant
# update multiplies the LR by m^1/2.
_SP_HIDDEN = Rule(init=(-0.5, 0.0), forward=_NONE, lr_sgd=_NONE, lr_adam=_NONE,
                  lr_muon=_NONE, lr_muon_spectral=_NONE)

register(Parameterization(
    name="sp", attention="sqrt", doc="standard parameterization",
    rules={"input": _SP_MATRIX, "hidden": _SP_HIDDEN, "output": _SP_MATRIX,
           "vector": _CONST, "scalar": _CONST}))
register(Parameterization(
    name="mup", attention="linear", doc="maximal update parameterization (microsoft/mup)",
    rules={"input": _INPUT_MUP,
           "hidden": Rule(init=(-0.5, 0.0), forward=_NONE, lr_sgd=(-1.0, 1.0),
                          lr_adam=(-1.0, 0.0), lr_muon=(-0.5, 0.0),
                          lr_muon_spectral=_NONE),
           "output": _OUTPUT_MUP, "vector": _VECTOR_MUP, "scalar": _CONST}))
register(Parameterization(
    name="ntk", attention="sqrt", doc="neural tangent parameterization, global LR",
    rules={"input": _NTK_MATRIX, "hidden": _NTK_MATRIX, "output": _NTK_MATRIX,
           "vector": _CONST, "scalar": _CONST}))
register(Parameterization(
    name="mf", attention="linear", doc="mean-field abc with muP-equivalent per-layer LRs",
    rules={"input": _INPUT_MUP,
           "hidden": Rule(init=_NONE, forward=(-0.5, 0.0), lr_sgd=(0.0, 1.0),
                          lr_adam=(-0.5, 0.0), lr_muon=_NONE, lr_muon_spectral=(0.5, 0.0)),
           "output": _OUTPUT_MUP, "vector": _VECTOR_MUP, "scalar": _CONST}))
