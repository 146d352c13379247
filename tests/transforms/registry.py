"""Registry of every transform the test suite checks (ours and the Pyro ones we reuse).

``test_registry.py`` runs ONE parametrized test over ``CASES``: output shapes, inverse
round trip (float64), log|det J| against ``torch.autograd.functional.jacobian`` +
``slogdet``, gradients reaching every parameter, buffers registered and moved by
``.to(device)``, and a ``state_dict`` save/load round trip. ``test_registry_is_complete``
fails when a class in ``pyro_gen.transforms.__all__`` that subclasses ``Transform`` or
``ConditionalTransform`` is not listed in some case's ``covers``.

Adding a transform (other owners: a small edit appended at the END of this file)::

    from pyro_gen.transforms import continuous as C  # noqa: E402

    register(Case("cnf_exact", lambda: C.cnf(2, ...), (2,), (C.ContinuousFlow,),
                  roundtrip_atol=1e-5, ladj_atol=1e-5))

``test_registry.py`` also runs ``test_pyro_contract`` over pyro_gen's own cases:
``with_cache`` (shared parameters; the cached twin returns its own input without inverting),
``ComposeTransformModule(cache_size=1)`` / ``ConditionalComposeTransformModule``, points of
the declared domain and codomain (``far`` out as well) mapping finitely and round-tripping,
pickling after ``pyro.module``, and Pyro's param store save/load into a module built afresh.

``build`` returns a fresh module with small sizes (it is cast to float64 and its
parameters are perturbed by ``perturb``; use ``perturb=0.0`` to keep them); ``shape`` is
the input event shape of the forward map; set ``context_dim`` for a
``ConditionalTransformModule``, ``invertible=False`` for maps without an inverse,
``skip={"grad"}`` for parameter-free ones, looser ``*_atol`` for ODE solvers.
Before the checks, each case is warmed up by one inverse call on a batch of 16 in
training mode (ActNorm initialises, BatchNorm updates statistics), then set to eval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], object]
    shape: tuple[int, ...]
    covers: tuple[type, ...] = ()
    context_dim: int | None = None
    #: expected buffer names (checked to be registered and moved by .to(device))
    buffers: tuple[str, ...] = ()
    #: False for transforms without an analytic inverse (Planar, Radial, Sylvester)
    invertible: bool = True
    roundtrip_atol: float = 1e-5
    ladj_atol: float = 1e-6
    #: scale of the random perturbation of parameters (so no layer sits at the identity)
    perturb: float = 0.2
    #: checks to skip, e.g. {"grad"} for a transform without parameters
    skip: frozenset[str] = field(default_factory=frozenset)
    #: run under torch.set_default_dtype(float64): works around Pyro's AffineAutoregressive
    #: inverse, which allocates with the default dtype (float32) whatever the input dtype
    default_float64: bool = False
    #: uses batch statistics in training mode (BatchNorm): train and eval differ by design;
    #: train-mode correctness is checked against autograd in test_normalization.py
    batch_stats: bool = False
    #: a known-wrong upstream transform: the test is expected to fail (xfail strict)
    known_bug: str | None = None
    #: how far out the contract test samples the (co)domain (ODE solves slow down there)
    far: float = 100.0


CASES: list[Case] = []


def register(case: Case) -> Case:
    if any(c.name == case.name for c in CASES):
        raise ValueError(f"duplicate registry case {case.name!r}")
    CASES.append(case)
    return case


# ----------------------------------------------------------------------------- coupling
from pyro_gen import transforms as T  # noqa: E402

register(
    Case(
        "additive_coupling_vec",
        lambda: T.additive_coupling(5, hidden_dims=[8]),
        (5,),
        (T.AdditiveCoupling,),
        buffers=("mask", "cond_idx", "trans_idx"),
    )
)
register(
    Case(
        "affine_coupling_vec",
        lambda: T.affine_coupling(5, hidden_dims=[8], parity=1),
        (5,),
        (T.AffineCoupling,),
        buffers=("mask",),
    )
)
register(
    Case(
        "affine_coupling_half",
        lambda: T.affine_coupling(6, mask="half", hidden_dims=[8]),
        (6,),
        (T.AffineCoupling,),
        buffers=("mask",),
    )
)
register(
    Case(
        "generic_coupling_vec",
        lambda: T.coupling(4, T.Affine(2.0), hidden_dims=[8]),
        (4,),
        (T.Coupling,),
        buffers=("mask",),
    )
)
register(
    Case(
        "affine_coupling_checkerboard",
        lambda: T.affine_coupling((2, 3, 3), hidden_channels=4, num_blocks=1),
        (2, 3, 3),
        (T.AffineCoupling,),
        buffers=("mask",),
    )
)
register(
    Case(
        "additive_coupling_channel",
        lambda: T.additive_coupling(
            (4, 2, 2), mask="channel", parity=1, hidden_channels=4, num_blocks=1
        ),
        (4, 2, 2),
        (T.AdditiveCoupling,),
        buffers=("mask", "cond_idx"),
    )
)
register(
    Case(
        "conditional_affine_coupling_vec",
        lambda: T.conditional_affine_coupling(4, 3, hidden_dims=[8]),
        (4,),
        (T.ConditionalAffineCoupling, T.ConditionalCoupling),
        context_dim=3,
        buffers=("mask",),
    )
)
register(
    Case(
        "conditional_additive_coupling_img",
        lambda: T.conditional_additive_coupling((2, 2, 2), 3, hidden_channels=4, num_blocks=1),
        (2, 2, 2),
        (T.ConditionalAdditiveCoupling,),
        context_dim=3,
        buffers=("mask",),
    )
)

# ------------------------------------------------------------------ autoregressive
register(
    Case(
        "maf",
        lambda: T.masked_autoregressive(4, [12]),
        (4,),
        (T.MaskedAutoregressive,),
        buffers=("order", "mask"),
    )
)
register(
    Case(
        "iaf",
        lambda: T.inverse_autoregressive(4, [12], order=torch.tensor([2, 0, 3, 1])),
        (4,),
        (T.InverseAutoregressive,),
        buffers=("order",),
    )
)
register(
    Case(
        "maf_additive",
        lambda: T.masked_autoregressive(3, [8], elementwise="additive"),
        (3,),
        (T.MaskedAutoregressive,),
    )
)
register(
    Case(
        "conditional_maf",
        lambda: T.conditional_masked_autoregressive(3, 2, [8]),
        (3,),
        (T.ConditionalMaskedAutoregressive,),
        context_dim=2,
        buffers=("mask",),
    )
)
register(
    Case(
        "conditional_iaf",
        lambda: T.conditional_inverse_autoregressive(3, 2, [8]),
        (3,),
        (T.ConditionalInverseAutoregressive,),
        context_dim=2,
    )
)

# ------------------------------------------------------------------- normalization
register(Case("actnorm_vec", lambda: T.ActNorm(3), (3,), (T.ActNorm,)))
register(
    Case(
        "actnorm_img",
        lambda: T.ActNorm((2, 3, 3)),
        (2, 3, 3),
        (T.ActNorm,),
    )
)
register(
    Case(
        "batchnorm_vec",
        lambda: T.BatchNorm(3),
        (3,),
        (T.BatchNorm,),
        buffers=("running_mean", "running_var"),
        batch_stats=True,
    )
)
register(
    Case(
        "batchnorm_img",
        lambda: T.BatchNorm((2, 2, 3)),
        (2, 2, 3),
        (T.BatchNorm,),
        buffers=("running_mean", "running_var"),
        batch_stats=True,
    )
)

# ------------------------------------------------------------ linear / permutation
register(
    Case(
        "conv1x1",
        lambda: T.InvertibleConv1x1((3, 2, 2)),
        (3, 2, 2),
        (T.InvertibleConv1x1,),
        buffers=("perm", "sign_s", "lower_mask"),
    )
)
register(
    Case(
        "linear_lu_vec",
        lambda: T.invertible_conv1x1(4),
        (4,),
        (T.InvertibleConv1x1,),
        buffers=("perm",),
    )
)
register(
    Case(
        "permute_random",
        lambda: T.permute(5, "random", seed=3),
        (5,),
        (T.Permute,),
        buffers=("permutation", "inv_permutation"),
        skip=frozenset({"grad"}),
    )
)
register(
    Case(
        "permute_channels",
        lambda: T.permute((3, 2, 2)),
        (3, 2, 2),
        (T.Permute,),
        buffers=("permutation",),
        skip=frozenset({"grad"}),
    )
)

# ------------------------------------------------------------------------- reshape
register(
    Case("squeeze", lambda: T.Squeeze((1, 4, 2)), (1, 4, 2), (T.Squeeze,), skip=frozenset({"grad"}))
)
register(
    Case(
        "unsqueeze",
        lambda: T.Unsqueeze((8, 1, 2)),
        (8, 1, 2),
        (T.Unsqueeze,),
        skip=frozenset({"grad"}),
    )
)


def _multiscale():
    def level(shape, last):
        mask = "channel" if shape[0] > 1 else "checkerboard"
        return [
            T.ActNorm(shape),
            T.InvertibleConv1x1(shape),
            T.affine_coupling(shape, mask=mask, hidden_channels=4, num_blocks=1),
        ]

    return T.multi_scale((1, 4, 4), level, num_levels=2)


register(Case("multiscale", _multiscale, (16,), (T.MultiScale,), buffers=("perm", "mask")))


def _multiscale_realnvp():
    # RealNVP layout: checkerboard coupling at full resolution, then squeeze (Unsqueeze
    # in Pyro order) and a channel coupling, factor out half
    lvl0 = [
        T.affine_coupling((4, 2, 2), mask="channel", hidden_channels=4, num_blocks=1),
        T.Unsqueeze((4, 2, 2)),
        T.affine_coupling((1, 4, 4), hidden_channels=4, num_blocks=1),
    ]
    lvl1 = [T.BatchNorm((2, 2, 2)), T.additive_coupling((2, 2, 2), hidden_channels=4, num_blocks=1)]
    return T.MultiScale((1, 4, 4), [lvl0, lvl1])


register(
    Case(
        "multiscale_realnvp",
        _multiscale_realnvp,
        (16,),
        (T.MultiScale,),
        buffers=("running_mean", "mask"),
        batch_stats=True,
    )
)

# ------------------------------------------------------------- reused Pyro transforms
from pyro.distributions import transforms as PT  # noqa: E402

register(
    Case(
        "pyro_affine_autoregressive",
        lambda: PT.affine_autoregressive(4, hidden_dims=[8]),
        (4,),
        (PT.AffineAutoregressive,),
        default_float64=True,
    )
)
register(Case("pyro_spline", lambda: PT.spline(3, count_bins=4, bound=4.0), (3,), (PT.Spline,)))
register(
    Case(
        "pyro_spline_coupling",
        lambda: PT.spline_coupling(4, hidden_dims=[8], count_bins=4),
        (4,),
        (PT.SplineCoupling,),
    )
)
register(Case("pyro_planar", lambda: PT.planar(3), (3,), (PT.Planar,), invertible=False))
register(Case("pyro_radial", lambda: PT.radial(3), (3,), (PT.Radial,), invertible=False))
register(
    Case("pyro_householder", lambda: PT.householder(3, count_transforms=2), (3,), (PT.Householder,))
)
register(
    Case(
        "pyro_sylvester",
        lambda: PT.sylvester(3, count_transforms=2),
        (3,),
        (PT.Sylvester,),
        invertible=False,
        # y = x + tanh(x S Q^T + b) Q R (row vectors) has Jacobian I + S Q^T diag(h') Q R,
        # whose determinant is not prod(1 + h'_i R_ii S_ii) unless Q = I
        known_bug="pyro 1.9 Sylvester: log|det J| = sum log(1 + h' R_ii S_ii) is wrong for "
        "Q != I (row-vector form); disagrees with autograd by ~1e-2 on perturbed parameters",
    )
)

# ------------------------------------------------------- continuous flows, dequantization
register(
    Case(
        "continuous_flow_exact",
        # tight tolerances: an ODE flow's log|det J| is exact only up to the solver's
        lambda: T.cnf(3, (8,), trace="exact", rtol=1e-8, atol=1e-8),
        (3,),
        (T.ContinuousFlow,),
        far=10.0,
    )
)
register(
    Case(
        "scaled_sigmoid",
        lambda: T.ScaledSigmoid(alpha=0.05, event_dim=1),
        (4,),
        (T.ScaledSigmoid,),
        # its inverse is defined on its codomain, an interval around [0, 1], not on the
        # Gaussian inputs used here; test_pyro_contract checks it there (end points too)
        invertible=False,
    )
)
# not reused (vector-only, train-mode forward log-det wrong; see pyro_gen BatchNorm docs),
# but kept as the reference our BatchNorm is compared with in test_normalization.py
register(
    Case(
        "pyro_batchnorm",
        lambda: PT.batchnorm(3),
        (3,),
        (PT.BatchNorm,),
        buffers=("moving_mean", "moving_variance"),
        batch_stats=True,
    )
)

# ------------------------------------------------------------ neural spline flows
# The spline is an element-wise map (RationalQuadratic), so these are Coupling and the
# autoregressive classes again; bound 3 puts some inputs in the identity tails.
register(
    Case(
        "spline_coupling_vec",
        lambda: T.spline_coupling(5, num_bins=4, bound=3.0, hidden_dims=[8]),
        (5,),
        (T.Coupling,),
        buffers=("mask",),
    )
)
register(
    Case(
        "spline_coupling_checkerboard",
        lambda: T.spline_coupling(
            (2, 3, 3), num_bins=3, bound=3.0, hidden_channels=4, num_blocks=1
        ),
        (2, 3, 3),
        (T.Coupling,),
        buffers=("mask",),
    )
)
register(
    Case(
        "spline_maf",
        lambda: T.spline_autoregressive(4, [12], num_bins=4, bound=3.0),
        (4,),
        (T.MaskedAutoregressive,),
        buffers=("order",),
    )
)
register(
    Case(
        "spline_iaf",
        lambda: T.spline_autoregressive(3, [12], num_bins=4, bound=3.0, inverse=True),
        (3,),
        (T.InverseAutoregressive,),
    )
)
register(
    Case(
        "conditional_spline_coupling",
        lambda: T.conditional_spline_coupling(4, 2, num_bins=4, bound=3.0, hidden_dims=[8]),
        (4,),
        (T.ConditionalCoupling,),
        context_dim=2,
    )
)
register(
    Case(
        "conditional_spline_maf",
        lambda: T.conditional_spline_autoregressive(3, 2, [8], num_bins=4, bound=3.0),
        (3,),
        (T.ConditionalMaskedAutoregressive,),
        context_dim=2,
    )
)

# ------------------------------------------------------------------- residual flows
register(
    Case(
        "residual_block",
        # exact log-det in training mode too: the roulette estimate is random by design
        # (its unbiasedness is tested in test_residual.py); tight fixed-point tolerance
        lambda: T.residual_block(3, [8], lipschitz=0.7, logdet="exact", tol=1e-11),
        (3,),
        (T.ResidualBlock,),
        perturb=0.5,
    )
)
