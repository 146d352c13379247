"""Bijections as Pyro ``TransformModule``s, one family per file.

Pyro transforms we reuse rather than rewrite (they pass our registry test in
``tests/transforms/test_registry.py``): ``AffineAutoregressive``, ``Spline``,
``SplineCoupling``, ``Planar``, ``Radial``, ``Householder``, ``Sylvester``; import them
from ``pyro.distributions.transforms``.
"""

from __future__ import annotations

from pyro_gen.transforms._base import FlowTransformModule
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
from pyro_gen.transforms.masks import alternating_mask, channel_mask, checkerboard_mask, half_mask

__all__ = [
    "Additive",
    "AdditiveCoupling",
    "Affine",
    "AffineCoupling",
    "ConditionalAdditiveCoupling",
    "ConditionalAffineCoupling",
    "ConditionalCoupling",
    "Coupling",
    "ElementwiseBijection",
    "FlowTransformModule",
    "additive_coupling",
    "affine_coupling",
    "alternating_mask",
    "channel_mask",
    "checkerboard_mask",
    "conditional_additive_coupling",
    "conditional_affine_coupling",
    "coupling",
    "half_mask",
    "make_mask",
]
