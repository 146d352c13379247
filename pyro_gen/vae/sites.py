"""Site and plate names shared by every model and guide in :mod:`pyro_gen.vae`.

Defined once so that a model and any guide swapped in for it agree on names.
"""

from __future__ import annotations

#: Name of the plate over examples; every local latent and observation lives under it.
DATA_PLATE = "data"
#: Name of the latent site of a single-layer VAE.
LATENT = "z"
#: Name of the observed site.
OBS = "x"


def latent_site(layer: int) -> str:
    """Name of the latent site of stochastic layer ``layer`` (1 = closest to the data).

    Example:
        >>> latent_site(2)
        'z2'
    """
    if layer < 1:
        raise ValueError(f"layers are numbered from 1, got {layer}")
    return f"z{layer}"
