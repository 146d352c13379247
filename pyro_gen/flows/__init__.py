"""Ready-made normalizing-flow density models following the pyro_gen model protocol.

Every model is a :class:`~pyro_gen.flows.base.FlowModel`: ``model(x)`` observes ``x`` under
``pyro.plate("data")``, ``guide`` is empty (or the dequantization guide), so Trace_ELBO with SVI
is exact maximum likelihood; ``log_prob(x)``, ``sample(n, temperature=1.0)``,
``distribution()`` (for ``pyro.sample`` under plates) and ``bits_per_dim(x)`` for images.

Example:
    >>> import torch
    >>> flow = build("realnvp", (2,), num_layers=2, hidden_dims=(8,))
    >>> flow.log_prob(torch.randn(4, 2)).shape
    torch.Size([4])
"""

from __future__ import annotations

from collections.abc import Sequence

from pyro_gen.flows.base import FlowModel, make_dequantizer
from pyro_gen.flows.cnf import CNF
from pyro_gen.flows.glow import Glow
from pyro_gen.flows.maf import MAF
from pyro_gen.flows.nice import NICE
from pyro_gen.flows.nsf import NSF
from pyro_gen.flows.realnvp import RealNVP
from pyro_gen.flows.resflow import ResidualFlow
from pyro_gen.transforms._base import as_event_shape

__all__ = [
    "CNF",
    "FLOWS",
    "MAF",
    "NICE",
    "NSF",
    "FlowModel",
    "Glow",
    "RealNVP",
    "ResidualFlow",
    "build",
    "make_dequantizer",
]

#: name -> class, for the CLI and configs
FLOWS: dict[str, type[FlowModel]] = {
    "nice": NICE,
    "realnvp": RealNVP,
    "glow": Glow,
    "maf": MAF,
    "cnf": CNF,
    "nsf": NSF,
    "resflow": ResidualFlow,
}

# Sizes that train in minutes on a CPU; any constructor argument overrides them.
_DEFAULTS: dict[str, dict[str, dict]] = {
    "nice": {
        "vector": {"num_layers": 4, "hidden_dims": (128, 128)},
        "image": {"num_layers": 4, "hidden_dims": (512, 512)},
    },
    "realnvp": {
        # Depth over width on 2D toys: 16 couplings of 64 units beat 8 of 128 (and 24 of 32)
        # at equal CPU time on eight Gaussians (benchmarks/flows_2d.py; RESULTS.md).
        "vector": {"num_layers": 16, "hidden_dims": (64, 64)},
        "image": {"num_layers": 3, "hidden_channels": 32, "num_blocks": 2},
    },
    "glow": {
        "vector": {"depth": 8, "hidden_dims": (128, 128)},
        "image": {"depth": 4, "hidden_channels": 64, "num_blocks": 1},
    },
    "maf": {
        # 10 layers of 64 units: 0.06 nats KL on eight Gaussians after 1 CPU minute against
        # 0.12 for 5 of 128, level on checkerboard (benchmarks/flows_2d.py).
        "vector": {"num_layers": 10, "hidden_dims": (64, 64)},
        "image": {"num_layers": 5, "hidden_dims": (1024,)},
    },
    "nsf": {
        # the class's defaults, 4 spline couplings of 32 bins: faster per step than the
        # autoregressive layers and what meets the 2D toy targets (NSF's docstring says why)
        "vector": {"num_layers": 4, "hidden_dims": (64, 64)},
        # multi-scale spline couplings at RealNVP's MNIST CPU size: 1.33 bits/dim in 8 CPU
        # minutes, against 1.65 for flattened autoregressive spline layers (RESULTS.md)
        "image": {
            "num_layers": 2,
            "hidden_channels": 16,
            "num_blocks": 1,
            "num_levels": 2,
            "spline_bins": 8,
        },
    },
    "resflow": {
        "vector": {"num_layers": 8, "hidden_dims": (64, 64)},
        # flattened images: the roulette log-det (784 dimensions), one hidden layer
        "image": {"num_layers": 4, "hidden_dims": (512,)},
    },
    "cnf": {
        "vector": {"hidden_dims": (64, 64, 64), "rtol": 1e-5, "atol": 1e-5},
        "image": {"hidden_dims": (32, 32), "rtol": 1e-4, "atol": 1e-4},
    },
}


def build(name: str, event_shape: Sequence[int], **options) -> FlowModel:
    """Build a flow density model by name for data of ``event_shape``.

    Args:
        name: ``"nice"``, ``"realnvp"``, ``"glow"``, ``"maf"``, ``"nsf"``, ``"resflow"`` or
            ``"cnf"``.
        event_shape: ``(D,)`` for 2D toys, ``(8, 8)`` for digits, ``(28, 28)`` for MNIST
            (images take pixels in :math:`[0, 1]`, e.g. ``uniform_dequantize(x)``).
        **options: constructor arguments overriding the CPU-sized defaults (e.g.
            ``num_layers``, ``hidden_dims``, ``dequantization``, ``num_bins``).

    Returns:
        The model; pass it to ``pyro_gen.infer.fit``.
    """
    key = name.lower()
    if key not in FLOWS:
        raise ValueError(f"unknown flow {name!r}; choose from {sorted(FLOWS)}")
    event_shape = as_event_shape(event_shape)
    kind = "vector" if len(event_shape) == 1 else "image"
    kwargs = {**_DEFAULTS[key][kind], **options}
    return FLOWS[key](event_shape, **kwargs)
