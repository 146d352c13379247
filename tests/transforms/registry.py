"""Registry of every transform the test suite checks (ours and the Pyro ones we reuse).

Adding a transform = appending one ``Case`` to ``CASES`` (a small edit at the END of this
file). ``build`` returns a fresh transform (a ``Transform``/``TransformModule`` mapping
inputs of event shape ``shape``, or a ``ConditionalTransformModule`` when
``context_dim`` is set); ``covers`` lists the public classes the case exercises, which
the completeness test in ``test_registry.py`` compares with ``pyro_gen.transforms.__all__``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


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
    #: a known-wrong upstream transform: the test is expected to fail (xfail strict)
    known_bug: str | None = None


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
        known_bug="pyro 1.9 Sylvester: log|det J| uses diag(R)diag(S), which is only the "
        "determinant when Q commutes with it; disagrees with autograd by ~1e-2",
    )
)
