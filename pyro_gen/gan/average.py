"""An exponential moving average of a network's weights (Polyak averaging of a generator)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from pyro_gen.transforms._base import PicklableModule


class ExponentialAverage(PicklableModule):
    """A frozen copy of a module whose weights follow an exponential moving average of the
    original's:

    .. math:: \\bar\\theta_t = \\beta_t \\bar\\theta_{t-1} + (1 - \\beta_t)\\,\\theta_t,
              \\qquad \\beta_t = \\min\\Big(\\beta, \\frac{1 + t}{10 + t}\\Big),

    where :math:`t` counts the updates; the warm-up :math:`\\beta_t` (the ``num_updates``
    rule of TensorFlow's ``ExponentialMovingAverage``) keeps a short run from staying near
    the initial weights. A GAN's generator oscillates around the equilibrium of the game
    instead of converging to it; the average of its recent iterates sits closer to it
    (Yazici et al. 2019) and is what StyleGAN and BigGAN sample from. Buffers (batch norm's
    running statistics) are copied, not averaged.

    The copy's parameters do not require gradients and are never registered with Pyro, so
    no optimizer touches them; they are in the ``state_dict``, so checkpoints keep them.
    Before the first :meth:`update` there is no average (:meth:`has_average` is False): the
    copy holds the initial weights, and its users (:class:`~pyro_gen.gan.Generator`) keep
    the network's own.

    Args:
        module: the module to average (it is deep-copied; the copy starts at its weights).
        decay: :math:`\\beta`, in (0, 1); the average spans about ``1 / (1 - decay)`` updates.

    References:
        Yazici et al., The Unusual Effectiveness of Averaging in GAN Training,
        arXiv:1806.04498. Karras et al., Progressive Growing of GANs, arXiv:1710.10196.

    Example:
        >>> net = nn.Linear(1, 1, bias=False)
        >>> _ = nn.init.zeros_(net.weight)
        >>> avg = ExponentialAverage(net, decay=0.5)
        >>> _ = nn.init.ones_(net.weight)
        >>> avg.update(net)  # t = 1: beta_1 = min(0.5, 2 / 11), so 0 moves to 9 / 11
        >>> abs(float(avg.module.weight) - 9 / 11) < 1e-6
        True
    """

    def __init__(self, module: nn.Module, decay: float = 0.999) -> None:
        super().__init__()
        if isinstance(decay, bool) or not 0.0 < float(decay) < 1.0:
            raise ValueError(f"decay must be in (0, 1), e.g. 0.999; got {decay!r}")
        self.decay = float(decay)
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        """Moves the average toward ``source``'s current weights (call once per optimizer
        step of ``source``)."""
        mine, theirs = list(self.module.parameters()), list(source.parameters())
        if len(mine) != len(theirs):
            raise ValueError(
                f"the averaged module has {len(mine)} parameters but the source has "
                f"{len(theirs)}: average the module this average was built from"
            )
        for (name, a), p in zip(self.module.named_parameters(), theirs):
            # torch's own errors ("The size of tensor a (2) must match...", "expected dtype
            # float for `end`") named neither the parameter nor the repair
            if a.shape != p.shape:
                raise ValueError(
                    f"parameter {name!r} of the average has shape {tuple(a.shape)} but the "
                    f"source's has {tuple(p.shape)}: average the module this average was "
                    "built from"
                )
            if (a.dtype, a.device) != (p.dtype, p.device):
                raise ValueError(
                    f"parameter {name!r} of the average is {a.dtype} on {a.device} but the "
                    f"source's is {p.dtype} on {p.device}: move or convert the average with "
                    "the network (average.to(...)), or build it after converting the network"
                )
        self.num_updates += 1
        t = self.num_updates.to(torch.get_default_dtype())
        # on the parameters' device as a tensor: no host read-back per step
        beta = torch.clamp((1 + t) / (10 + t), max=self.decay)
        for a, p in zip(mine, theirs):
            a.lerp_(p.detach(), (1 - beta).to(a))
        for a, b in zip(self.module.buffers(), source.buffers()):
            a.copy_(b)

    def has_average(self) -> bool:
        """Whether :meth:`update` has run (``num_updates > 0``), so the copy averages something.

        Why: the copy starts as the initial weights, so a generator trained without updates
        (in Pyro's own ``SVI`` loop, or restored from ``pyro.get_param_store()``, which holds
        no buffers) generated in eval mode and in ``sample()`` from its untrained network.
        The read is a comparison that stays True once updated, so a recorded run of the
        model that branches on it stays valid as the updates go on
        (:mod:`pyro_gen.gan.recorded`).

        Example:
            >>> avg = ExponentialAverage(nn.Linear(1, 1))
            >>> avg.has_average()
            False
            >>> avg.update(nn.Linear(1, 1))
            >>> avg.has_average()
            True
        """
        return bool(self.num_updates > 0)

    def forward(self, *args, **kwargs):
        """Calls the averaged module."""
        return self.module(*args, **kwargs)
