"""Residual blocks: the Lipschitz bound after spectral normalisation, the Russian-roulette
log-determinant and its Neumann-series gradient unbiased against the exact ones, and the
fixed-point inverse within its tolerance. (Round trips and the exact log-det against
autograd: the registry test.)"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from pyro_gen import transforms as T


def _log_det(t, z: torch.Tensor) -> torch.Tensor:
    """log|det| of the forward map at ``t.inv(z)``, from the density pass itself."""
    z = z.clone()  # a new tensor: the pass runs, and the log-det below is its own
    return t.log_abs_det_jacobian(t.inv(z), z)


def _block(logdet: str = "roulette", lipschitz: float = 0.9, seed: int = 0, **kw):
    torch.manual_seed(seed)
    t = T.residual_block(3, [16, 16], lipschitz=lipschitz, logdet=logdet, **kw).double()
    with torch.no_grad():  # large weights: the normalisation, not the init, bounds them
        for p in t.parameters():
            p.add_(2.0 * torch.randn_like(p))
    return t


@pytest.mark.parametrize("lipschitz", [0.5, 0.97])
def test_lipschitz_below_the_bound(lipschitz: float) -> None:
    t = _block(lipschitz=lipschitz)
    for layer in t.net:
        if hasattr(layer, "normalized_weight"):
            norm = torch.linalg.matrix_norm(layer.normalized_weight(), ord=2)
            assert norm.item() <= lipschitz * (1 + 1e-12)
    for x in 3 * torch.randn(20, 3, dtype=torch.float64):
        norm = torch.linalg.matrix_norm(jacobian(t.net, x), ord=2)
        assert norm.item() < lipschitz


def test_roulette_log_det_is_unbiased() -> None:
    t = _block()
    z = torch.randn(4, 3, dtype=torch.float64)
    t.eval()
    exact = _log_det(t, z).detach()
    t.train()
    torch.manual_seed(1)
    # one number of terms per call, shared by its batch: average 25 copies per call (one
    # draw of the number of terms) and take the spread over calls
    n, copies = 200, z.expand(25, 4, 3)
    with torch.no_grad():
        draws = torch.stack([_log_det(t, copies).mean(0) for _ in range(n)])
    assert draws.std(0).min() > 0  # really random: not the exact value in disguise
    se = draws.std(0) / n**0.5
    assert bool(((draws.mean(0) - exact).abs() < 3 * se + 1e-12).all()), (draws.mean(0), exact)


def test_neumann_gradient_is_unbiased() -> None:
    t = _block()
    z = torch.randn(4, 3, dtype=torch.float64)
    params = [p for p in t.parameters()]

    def grads() -> torch.Tensor:
        ladj = _log_det(t, z).sum()
        # the last layer's bias does not enter the Jacobian: no gradient, i.e. zero
        gs = torch.autograd.grad(ladj, params, allow_unused=True)
        return torch.cat(
            [(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, gs)]
        )

    t.eval()
    exact = grads()
    t.train()
    torch.manual_seed(2)
    n = 200
    draws = torch.stack([grads() for _ in range(n)])
    se = draws.std(0) / n**0.5
    # every coordinate within 4 standard errors (hundreds of coordinates)
    assert bool(((draws.mean(0) - exact).abs() <= 4 * se + 1e-10).all())


def test_fixed_point_inverse_within_tolerance() -> None:
    t = _block(logdet="exact", lipschitz=0.95, tol=1e-7).eval()
    x = 5 * torch.randn(50, 3, dtype=torch.float64)
    y = t(x)
    # y solves y + g(y) = x up to the tolerance on the iterates (times 1/(1 - Lip))
    residual = (y + t.net(y) - x).abs().max().item()
    assert residual <= 1e-7 * 0.95 / (1 - 0.95) + 1e-12


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="lipschitz must lie in"):
        T.residual_block(2, [4], lipschitz=1.0)
    with pytest.raises(ValueError, match="logdet must be"):
        T.residual_block(2, [4], logdet="series")
