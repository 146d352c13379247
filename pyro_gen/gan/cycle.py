"""CycleGAN (Zhu et al. 2017): two translators between unpaired domains, as a Pyro model and
a Pyro loss object."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.util import scale_and_mask
from torch import nn

from pyro_gen.gan.adversarial import OptimizerFactory
from pyro_gen.gan.loss_object import PyroLoss
from pyro_gen.gan.objectives import LeastSquaresGAN
from pyro_gen.gan.observed import ObservedSite, observed_sites
from pyro_gen.gan.recorded import RecordedRuns
from pyro_gen.nn.registration import register_module
from pyro_gen.plates import data_plate
from pyro_gen.transforms._base import PicklableModule

#: Sites of the CycleGAN model: the translations (observed at the other domain's data) and
#: the round trips (deterministic).
TO_Y, TO_X, CYCLE_X, CYCLE_Y = "y", "x", "x_cycle", "y_cycle"


class CycleGAN(PicklableModule):
    """Translators :math:`G: X \\to Y` and :math:`F: Y \\to X` as a Pyro model over one
    unpaired batch of each domain.

    Under the plate ``"data"`` (the two batches have the same size; example ``i`` of one
    is unrelated to example ``i`` of the other), the site ``"y"`` is
    ``Delta(G(x))`` observed at the batch of ``Y`` and ``"x"`` is ``Delta(F(y))`` observed
    at the batch of ``X``: each adversarial term compares a domain's data with the
    translations into it. A caller's plate over the pairs (Pyro's minibatch idiom, any
    name) is the model's plate, and its ``N / B`` scale applies to :class:`CycleGANLoss`.
    The round trips :math:`F(G(x))` and :math:`G(F(y))` are the deterministic sites
    ``"x_cycle"`` and ``"y_cycle"``, which :class:`CycleGANLoss` holds to the inputs. The
    guide is empty: the translators are deterministic.

    Args:
        g: the network :math:`G` taking ``x`` to the shape of ``y``.
        f: the network :math:`F` taking ``y`` to the shape of ``x``.
        x_shape: shape of one example of ``X``.
        y_shape: shape of one example of ``Y``.
        name: prefix for the networks' names in Pyro's param store.

    References:
        Zhu, Park, Isola & Efros, Unpaired Image-to-Image Translation using
        Cycle-Consistent Adversarial Networks, arXiv:1703.10593.

    Example:
        >>> cyc = CycleGAN(nn.Linear(2, 3), nn.Linear(3, 2), (2,), (3,))
        >>> tr = pyro.poutine.trace(cyc.model).get_trace(torch.zeros(4, 2), torch.zeros(4, 3))
        >>> [n for n, site in tr.nodes.items() if site.get("is_observed")]
        ['y', 'x', 'x_cycle', 'y_cycle']
        >>> cyc.translate(torch.zeros(5, 2)).shape
        torch.Size([5, 3])
    """

    def __init__(
        self,
        g: nn.Module,
        f: nn.Module,
        x_shape: Sequence[int],
        y_shape: Sequence[int],
        *,
        name: str = "",
    ) -> None:
        super().__init__()
        self.g, self.f = g, f
        self.x_shape = tuple(int(s) for s in x_shape)
        self.y_shape = tuple(int(s) for s in y_shape)
        self.prefix = f"{name}." if name else ""

    def _check(self, value: torch.Tensor, shape: tuple[int, ...], arg: str) -> None:
        if value is None or value.dim() != len(shape) + 1 or tuple(value.shape[1:]) != shape:
            got = None if value is None else tuple(value.shape)
            raise ValueError(
                f"CycleGAN.model needs {arg}= a batch of shape (batch, "
                f"{', '.join(map(str, shape))}), got {got} (in fit, the data as a dict "
                "{'x': ..., 'y': ...} of two unpaired sets of equal size)"
            )

    def model(
        self, x: torch.Tensor | None = None, y: torch.Tensor | None = None, **kwargs: Any
    ) -> None:
        """The two translations observed at the other domain's data, and the round trips."""
        self._check(x, self.x_shape, "x")
        self._check(y, self.y_shape, "y")
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"the unpaired batches must have the same size, got {x.shape[0]} examples "
                f"of X and {y.shape[0]} of Y"
            )
        register_module(self.prefix + "g", self.g)
        register_module(self.prefix + "f", self.f)
        # the caller's plate over these pairs, if any, is the model's (its N/B scale applies)
        with data_plate(x.shape[0], "CycleGAN"):
            fake_y, fake_x = self.g(x), self.f(y)
            pyro.sample(TO_Y, dist.Delta(fake_y, event_dim=len(self.y_shape)), obs=y)
            pyro.sample(TO_X, dist.Delta(fake_x, event_dim=len(self.x_shape)), obs=x)
            pyro.deterministic(CYCLE_X, self.f(fake_y), event_dim=len(self.x_shape))
            pyro.deterministic(CYCLE_Y, self.g(fake_x), event_dim=len(self.y_shape))

    def guide(self, *args: Any, **kwargs: Any) -> None:
        """The empty guide: nothing is latent."""

    @torch.no_grad()
    def translate(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`G(x)`: examples of ``X`` translated to ``Y``."""
        return self.g(x)

    @torch.no_grad()
    def translate_back(self, y: torch.Tensor) -> torch.Tensor:
        """:math:`F(y)`: examples of ``Y`` translated to ``X``."""
        return self.f(y)


class CycleGANLoss(PyroLoss):
    """The CycleGAN objective as a Pyro loss object owning both discriminators.

    With least-squares adversarial terms (:class:`LeastSquaresGAN`, one per domain, each
    with its discriminator and optimizer) the translators minimise, per pair of examples,

    .. math:: \\tfrac12 (D_Y(G(x)) - 1)^2 + \\tfrac12 (D_X(F(y)) - 1)^2
              + \\lambda\\, \\big(\\overline{|F(G(x)) - x|} + \\overline{|G(F(y)) - y|}\\big),

    the bars averaging the L1 cycle error over each example's elements (as the paper's
    ``L1Loss``); summed over the plate like every adversarial loss of this package. Each
    training call first takes one least-squares step on each discriminator, on the same
    translations the translators' loss then scores.

    Args:
        discriminator_x: judges examples of ``X`` (one unbounded score each).
        discriminator_y: judges examples of ``Y``.
        cycle_weight: :math:`\\lambda` (10 in the paper).
        optim: builds each discriminator's optimizer; default fused Adam 2e-4, beta1 0.5.
        record: replay the translators' run from a recording (see
            :class:`~pyro_gen.gan.AdversarialLoss`); ``False``: every run through Pyro.

    References:
        Zhu et al., arXiv:1703.10593. Mao et al., Least Squares GANs, arXiv:1611.04076.

    Example:
        >>> cyc = CycleGAN(nn.Linear(2, 2), nn.Linear(2, 2), (2,), (2,))
        >>> loss = CycleGANLoss(nn.Linear(2, 1), nn.Linear(2, 1), cycle_weight=10.0)
        >>> value = loss.loss_and_grads(cyc.model, cyc.guide, torch.randn(8, 2), torch.randn(8, 2))
        >>> cyc.g.weight.grad is not None and cyc.f.weight.grad is not None
        True
    """

    _freeze_hint = "loss.x.discriminator.requires_grad_(False) (and loss.y's)"

    def __init__(
        self,
        discriminator_x: nn.Module,
        discriminator_y: nn.Module,
        *,
        cycle_weight: float = 10.0,
        optim: OptimizerFactory | None = None,
        record: bool = True,
    ) -> None:
        super().__init__()
        if not cycle_weight >= 0:
            raise ValueError(f"cycle_weight must be non-negative, got {cycle_weight!r}")
        self.x = LeastSquaresGAN(discriminator_x, optim=optim, site=TO_X)
        self.y = LeastSquaresGAN(discriminator_y, optim=optim, site=TO_Y)
        self.cycle_weight = float(cycle_weight)
        # the translators' run, replayed from a recording (see AdversarialLoss's record=)
        self.runs = RecordedRuns(backend="auto" if record else "pyro")

    def cycle_errors(self, sites: dict[str, ObservedSite] | pyro.poutine.Trace) -> torch.Tensor:
        """Mean absolute round-trip error per example, both domains added, from a run's
        observed sites (:func:`~pyro_gen.gan.observed.observed_sites`) or its trace."""
        if isinstance(sites, pyro.poutine.Trace):
            sites = observed_sites(sites)
        total = 0.0
        for name in (CYCLE_X, CYCLE_Y):
            site = sites.get(name)
            if site is None:
                raise ValueError(
                    f"the model has no site {name!r}: CycleGANLoss trains a CycleGAN model"
                )
            obs = sites[TO_X if name == CYCLE_X else TO_Y].obs
            error = (site.value - obs).abs()
            total = total + error.flatten(error.dim() - site.event_dim).mean(-1)
        return total  # type: ignore[return-value]

    def forward(self, model: Callable[..., Any], guide: Callable[..., Any], *args, **kwargs):
        """Updates both discriminators (with gradients enabled; a training call in eval mode
        is refused, a discriminator frozen with ``requires_grad_(False)`` is not stepped),
        then returns the translators' loss as a differentiable scalar."""
        training = self._training_call()
        sites = self.runs(model, guide, args, kwargs)
        batches = [(term, term.batch_of(sites, None)) for term in (self.x, self.y)]
        if training:
            for term, batch in batches:
                if term.trains_discriminator():
                    term.update_discriminator(batch)
        per_example = sum(term.generator_term(batch) for term, batch in batches)
        per_example = per_example + self.cycle_weight * self.cycle_errors(sites)
        batch = batches[0][1]
        return scale_and_mask(per_example, batch.scale, batch.mask).sum()
