r"""A variance-preserving SDE with a learnable monotone noise schedule (Variational Diffusion
Models, Kingma et al. 2021).

The schedule is the log noise-to-signal ratio :math:`\gamma(t) = \log(\sigma_t^2/\alpha_t^2)`,
increasing from :math:`\gamma_0` to :math:`\gamma_1`, with :math:`\alpha_t^2 =
\mathrm{sigmoid}(-\gamma(t))` and :math:`\sigma_t^2 = \mathrm{sigmoid}(\gamma(t))`. As an SDE
:math:`dx = f(t) x\, dt + g(t)\, dw` (see :mod:`pyro_gen.diffusion.sde`):

.. math::

    f(t) = \frac{d \log \alpha_t}{dt} = -\tfrac12 \gamma'(t)\, \sigma_t^2, \qquad
    g(t)^2 = \frac{d\sigma_t^2}{dt} - 2 f(t) \sigma_t^2 = \gamma'(t)\, \sigma_t^2,

so every sampler, the probability-flow likelihood and the continuous-time bound
(:func:`~pyro_gen.diffusion.bound.likelihood_bound`) use it like a fixed SDE.

Here :math:`\gamma(t) = \gamma_0 + (\gamma_1 - \gamma_0) F(t)` with :math:`F` piecewise linear on
``bins`` equal pieces, slopes ``bins * softmax(logits)``: monotone by construction, with an
exact derivative (VDM uses a monotone MLP; a piecewise-linear :math:`F` spans the same family
as the bins grow and keeps :math:`\gamma'` exact without a second autograd pass). Everything is
learned by the variational bound. For a score that is a function of the noise level
:math:`\gamma` (as VDM's network is, and as the exact score is) the continuous-time bound does
not depend on :math:`F` between the endpoints (Kingma et al., eq. 16), and VDM trains the interior
to reduce the estimator's variance instead. A :class:`~pyro_gen.diffusion.score.ScoreModel`'s
network sees the time :math:`t`, not :math:`\gamma`, so here :math:`F` also decides which
noise level the network sees at each :math:`t` (a learned warping of its time input), and the
bound's gradient trains it as such; VDM's variance-minimising update is not implemented.

References:
    Kingma, Salimans, Poole, Ho. Variational Diffusion Models. NeurIPS 2021, arXiv:2107.00630.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pyro_gen.diffusion.sde import SDE

__all__ = ["LearnedVPSDE"]


class LearnedVPSDE(SDE):
    r"""VP SDE whose log-SNR schedule :math:`-\gamma(t)` is learned (see module docstring).

    Args:
        gamma_min: initial :math:`\gamma_0` (VDM: -13.3, i.e. :math:`\sigma_0 \approx 1.3
            \cdot 10^{-3}`).
        gamma_max: initial :math:`\gamma_1` (VDM: 5, i.e. :math:`\alpha_1^2 \approx 0.0067`).
        bins: pieces of the monotone interpolant :math:`F` (1: linear :math:`\gamma`).
        learn_endpoints: learn :math:`\gamma_0, \gamma_1` (else buffers).

    Example:
        >>> sde = LearnedVPSDE(-10.0, 5.0)
        >>> a, s = sde.marginal(torch.tensor([0.0, 1.0]))
        >>> [round(v, 4) for v in (a**2 + s**2).tolist()], round(float(s[0] ** 2), 6)
        ([1.0, 1.0], 4.5e-05)
    """

    def __init__(
        self,
        gamma_min: float = -13.3,
        gamma_max: float = 5.0,
        *,
        bins: int = 16,
        learn_endpoints: bool = True,
    ) -> None:
        super().__init__()
        if not gamma_min < gamma_max:
            raise ValueError(f"gamma_min ({gamma_min}) must be below gamma_max ({gamma_max})")
        if isinstance(bins, bool) or int(bins) != bins or bins < 1:
            raise ValueError(f"bins must be a whole number >= 1, got {bins!r}")
        ends = torch.tensor([float(gamma_min), float(gamma_max)])
        if learn_endpoints:
            self.ends = nn.Parameter(ends)
        else:
            self.register_buffer("ends", ends)
        self.bins = int(bins)
        self.logits = nn.Parameter(torch.zeros(self.bins))

    def jump_times(self) -> Tensor | None:
        """:math:`\\gamma'` jumps at the bin edges."""
        if self.bins == 1:
            return None
        return torch.arange(1, self.bins, dtype=torch.float64) / self.bins

    def _slopes(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # bin index and position of t, and the slope K * softmax of every bin
        K = self.bins
        slopes = K * torch.softmax(self.logits.to(t.dtype), 0)
        pos = t.clamp(0, 1) * K
        k = pos.detach().floor().long().clamp(max=K - 1)
        return k, pos - k, slopes

    def gamma(self, t: Tensor) -> Tensor:
        """:math:`\\gamma(t)`."""
        k, frac, slopes = self._slopes(t)
        cum = torch.cat([slopes.new_zeros(1), torch.cumsum(slopes, 0)]) / self.bins
        F = cum[k] + frac * slopes[k] / self.bins
        g0, g1 = self.ends.to(t.dtype)
        return g0 + (g1 - g0) * F

    def gamma_prime(self, t: Tensor) -> Tensor:
        """:math:`\\gamma'(t)` (right derivative at the bin edges)."""
        k, _, slopes = self._slopes(t)
        g0, g1 = self.ends.to(t.dtype)
        return (g1 - g0) * slopes[k]

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        gamma = self.gamma(t)
        return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()

    def drift_coef(self, t: Tensor) -> Tensor:
        return -0.5 * self.gamma_prime(t) * torch.sigmoid(self.gamma(t))

    def diffusion(self, t: Tensor) -> Tensor:
        return (self.gamma_prime(t) * torch.sigmoid(self.gamma(t))).sqrt()
