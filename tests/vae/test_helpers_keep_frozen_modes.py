"""``impute`` and ``latent_features`` run the VAE in eval mode and give every module its own
mode back afterwards: a part the user froze (``decoder.eval()``, a pretrained batch norm)
stays frozen. Giving modes back with the recursive ``vae.train(mode)`` switched it back to
training, so its statistics moved (and dropout came on) at the next training step.
"""

from __future__ import annotations

import torch

from pyro_gen.vae import VAE
from pyro_gen.vae.missing import impute
from pyro_gen.vae.stacked import latent_features


def _vae_with_a_frozen_decoder() -> VAE:
    torch.manual_seed(0)
    vae = VAE((4, 4), 2, 8)
    vae.decoder.eval()  # frozen by the user; the rest trains
    assert vae.training and not vae.decoder.training
    return vae


def _modes(vae: VAE) -> list[bool]:
    return [m.training for m in vae.modules()]


def test_impute_gives_each_module_its_own_mode_back() -> None:
    vae = _vae_with_a_frozen_decoder()
    before = _modes(vae)
    x = torch.rand(3, 4, 4)
    mask = torch.rand(3, 4, 4) > 0.3
    impute(vae, x, mask, num_samples=8, chunk=4)
    assert _modes(vae) == before
    assert not vae.decoder.training


def test_latent_features_gives_each_module_its_own_mode_back() -> None:
    vae = _vae_with_a_frozen_decoder()
    before = _modes(vae)
    latent_features(vae, torch.rand(5, 4, 4), min_std=0.0)
    assert _modes(vae) == before
    assert not vae.decoder.training
