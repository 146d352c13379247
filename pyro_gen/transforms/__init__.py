"""Bijections as Pyro ``TransformModule``s, one family per file.

Direction convention (Pyro's): a transform maps base noise to data; ``log_prob`` applies
the inverse.

Pyro's transform contract: every transform takes ``cache_size`` (its helper too) with
Pyro's defaults (1 for autoregressive, coupling, permutation and ODE flows, so scoring a
transform's own sample costs no inverse, and for ``BatchNorm``, whose training-mode inverse
its forward map does not undo; 0 for the cheap ones) and implements
``with_cache``, so ``ComposeTransformModule(..., cache_size=1)``,
``ConditionalComposeTransformModule`` and ``pyro.infer.reparam.UnitJacobianReparam`` take
them; domains and codomains are where the map and its inverse are defined; modules pickle
after ``pyro.module`` (``tests/transforms/test_registry.py::test_pyro_contract``).

Neural spline flows are no class of their own: :class:`RationalQuadratic` is an element-wise
map beside ``Affine`` and ``Additive``, and ``spline_coupling`` / ``spline_autoregressive``
(and their conditional versions) put it in ``Coupling`` and the autoregressive layers.

Pyro transforms we reuse rather than rewrite (they are in the registry test,
``tests/transforms/registry.py``): ``AffineAutoregressive`` (affine IAF), ``Spline``,
``SplineCoupling``, ``Planar``, ``Radial``, ``Householder``; import them from
``pyro.distributions.transforms``. Pyro's ``Sylvester`` is registered as a known bug: its
log-determinant disagrees with autograd. Pyro's ``BatchNorm`` is vector-only; use ours.
"""

from __future__ import annotations

from pyro_gen.transforms._base import FlowTransformModule
from pyro_gen.transforms.autoregressive import (
    ConditionalInverseAutoregressive,
    ConditionalMaskedAutoregressive,
    InverseAutoregressive,
    MaskedAutoregressive,
    conditional_inverse_autoregressive,
    conditional_masked_autoregressive,
    inverse_autoregressive,
    masked_autoregressive,
)
from pyro_gen.transforms.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    ConditionalAdditiveCoupling,
    ConditionalAffineCoupling,
    ConditionalCoupling,
    Coupling,
    additive_coupling,
    affine_coupling,
    conditional_additive_coupling,
    conditional_affine_coupling,
    coupling,
    make_mask,
)
from pyro_gen.transforms.elementwise import Additive, Affine, ElementwiseBijection
from pyro_gen.transforms.linear import InvertibleConv1x1, invertible_conv1x1
from pyro_gen.transforms.masks import alternating_mask, channel_mask, checkerboard_mask, half_mask
from pyro_gen.transforms.normalization import ActNorm, BatchNorm
from pyro_gen.transforms.permutation import (
    Permute,
    permute,
    random_permutation,
    reverse_permutation,
)
from pyro_gen.transforms.reshape import MultiScale, Squeeze, Unsqueeze, multi_scale

__all__ = [
    "ActNorm",
    "Additive",
    "AdditiveCoupling",
    "Affine",
    "AffineCoupling",
    "BatchNorm",
    "ConditionalAdditiveCoupling",
    "ConditionalAffineCoupling",
    "ConditionalCoupling",
    "ConditionalInverseAutoregressive",
    "ConditionalMaskedAutoregressive",
    "Coupling",
    "ElementwiseBijection",
    "FlowTransformModule",
    "InverseAutoregressive",
    "InvertibleConv1x1",
    "MaskedAutoregressive",
    "MultiScale",
    "Permute",
    "Squeeze",
    "Unsqueeze",
    "additive_coupling",
    "affine_coupling",
    "alternating_mask",
    "channel_mask",
    "checkerboard_mask",
    "conditional_additive_coupling",
    "conditional_affine_coupling",
    "conditional_inverse_autoregressive",
    "conditional_masked_autoregressive",
    "coupling",
    "half_mask",
    "inverse_autoregressive",
    "invertible_conv1x1",
    "make_mask",
    "masked_autoregressive",
    "multi_scale",
    "permute",
    "random_permutation",
    "reverse_permutation",
]

# continuous flows and dequantization (flows engineer)
from pyro_gen.transforms.continuous import (  # noqa: E402
    ContinuousFlow,
    cnf,
    ode_log_likelihood,
    odeint_with_logdet,
)
from pyro_gen.transforms.dequantization import (  # noqa: E402
    ScaledSigmoid,
    UniformDequantization,
    VariationalDequantization,
)

__all__ += [
    "ContinuousFlow",
    "ScaledSigmoid",
    "UniformDequantization",
    "VariationalDequantization",
    "cnf",
    "ode_log_likelihood",
    "odeint_with_logdet",
]

# neural spline flows: the spline is an element-wise map of Coupling / the autoregressive
# transforms, so the helpers return those classes (no new transform class)
from pyro_gen.transforms.spline import (  # noqa: E402
    RationalQuadratic,
    check_spline_bound,
    conditional_spline_autoregressive,
    conditional_spline_coupling,
    spline_autoregressive,
    spline_coupling,
)

__all__ += [
    "RationalQuadratic",
    "check_spline_bound",
    "conditional_spline_autoregressive",
    "conditional_spline_coupling",
    "spline_autoregressive",
    "spline_coupling",
]

# residual flows (i-ResNet, Residual Flows)
from pyro_gen.transforms.residual import LipschitzMLP, ResidualBlock, residual_block  # noqa: E402

__all__ += ["LipschitzMLP", "ResidualBlock", "residual_block"]
