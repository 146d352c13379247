"""A GAN generator as an ordinary Pyro model: an implicit model with a Delta-observed site."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_gen.gan.average import ExponentialAverage
from pyro_gen.infer.callbacks import changes_only_tensors
from pyro_gen.nn.registration import register_module
from pyro_gen.plates import data_plate, generated_rows
from pyro_gen.transforms._base import PicklableModule, sample_count

#: Name of the plate over examples.
DATA_PLATE = "data"
#: Name of the latent code's site.
LATENT = "z"
#: Name of the generated (observed) example's site.
OBS = "x"


class StandardNormal(PicklableModule):
    """The default latent prior :math:`\\mathcal{N}(0, I_d)`, as a module returning a
    distribution (the same protocol as :class:`~pyro_gen.distributions.Flow`), whose
    location and scale are buffers so it follows the generator's device.

    Example:
        >>> StandardNormal(3)().event_shape
        torch.Size([3])
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self, context: torch.Tensor | None = None) -> dist.Distribution:
        # Buffers of zeros and ones need no argument check at every step.
        return dist.Normal(self.loc, self.scale, validate_args=False).to_event(1)


class Generator(PicklableModule):
    """An implicit generative model :math:`z \\sim p(z),\\ x = G(z)` written as a Pyro model.

    The generated example is the site ``"x"`` with distribution
    ``Delta(G(z), event_dim=len(event_shape))`` under the plate ``"data"``, observed when
    data are given; called under the user's own plate over the examples (Pyro's minibatch idiom,
    ``pyro.plate("data", N, subsample=idx)`` around ``model(x[idx])``, any name), that plate is
    the model's, and its ``N / B`` scale applies to the adversarial losses. A Delta can be
    sampled but has no useful density, so this model is trained by a likelihood-free objective:
    one of the adversarial losses of :mod:`pyro_gen.gan`, or Pyro's
    :class:`~pyro.infer.EnergyDistance`. Being a Pyro model, it works with
    :class:`~pyro.infer.Predictive`, ``poutine`` handlers and any prior module on ``z`` (a
    :class:`~pyro_gen.distributions.Flow`, whose parameters then train with the generator). The
    guide is empty: ``z`` is drawn from the prior.

    Args:
        net: the generator network ``net(z)`` (or ``net(z, context)`` when conditional)
            returning examples of shape ``event_shape``, e.g.
            :class:`~pyro_gen.nn.MLPGenerator`.
        latent_dim: size of ``z``; default ``net.latent_dim``.
        event_shape: shape of one example; default ``net.event_shape``.
        prior: a module returning the distribution of ``z`` when called with
            ``context=``; default standard Normal.
        num_classes: if given, a conditional generator: ``model(x, y=labels)`` passes the
            one-hot label (a float ``y`` is used as is) to the network.
        name: prefix for the names under which the networks enter Pyro's param store.
        average: if given, the decay of an exponential moving average of the network's
            and the prior's weights (:class:`ExponentialAverage`, e.g. ``0.999``), moved by
            :meth:`update_average` after each optimizer step (in ``fit``:
            ``step_callbacks=[gen.update_average]``). :meth:`sample`, and the model in eval
            mode, then generate with the averaged weights; training uses the network's own
            (the averaged ones carry no gradient, so an adversarial loss refuses to train the
            model in eval mode: ``gen.train()`` first). Before the first
            :meth:`update_average` there is no average, and they generate with the network's
            own weights: a generator trained in the user's own ``SVI`` loop without it, or
            restored through ``pyro.get_param_store()`` (which holds no buffers), samples
            what it learned, not its initial weights.
            Batch norm's running statistics are copied from the network, not averaged, so
            they belong to the raw weights: with batch norm (the DCGAN generator) draw
            samples in training mode, normalising with each batch's own statistics, as
            ``benchmarks/gan_mnist.py`` does.

    References:
        Goodfellow et al., Generative Adversarial Nets, arXiv:1406.2661.
        Mirza & Osindero, Conditional Generative Adversarial Nets, arXiv:1411.1784.

    Example:
        >>> from pyro_gen.nn import MLPGenerator
        >>> gen = Generator(MLPGenerator(4, (2,), hidden_dims=(16,)))
        >>> trace = pyro.poutine.trace(gen.model).get_trace(torch.zeros(5, 2))
        >>> type(trace.nodes["x"]["fn"]).__name__, trace.nodes["x"]["is_observed"]
        ('Delta', True)
        >>> gen.sample(3).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        net: nn.Module,
        latent_dim: int | None = None,
        event_shape: Sequence[int] | None = None,
        *,
        prior: nn.Module | None = None,
        num_classes: int | None = None,
        name: str = "",
        average: float | None = None,
    ) -> None:
        super().__init__()
        latent_dim = latent_dim if latent_dim is not None else getattr(net, "latent_dim", None)
        event_shape = event_shape if event_shape is not None else getattr(net, "event_shape", None)
        if latent_dim is None or event_shape is None:
            raise ValueError(
                f"{type(net).__name__} has no latent_dim/event_shape attributes: pass "
                "Generator(net, latent_dim=..., event_shape=...)"
            )
        self.net = net
        self.latent_dim = int(latent_dim)
        self.event_shape = tuple(int(s) for s in event_shape)
        self.prior = prior if prior is not None else self._default_prior(net, self.latent_dim)
        self.num_classes = num_classes
        self.prefix = f"{name}." if name else ""
        # net and prior averaged together: samples pair the averaged prior with the
        # averaged network
        self.average = (
            None
            if average is None
            else ExponentialAverage(nn.ModuleList([self.net, self.prior]), average)
        )

    @staticmethod
    def _default_prior(net: nn.Module, latent_dim: int) -> StandardNormal:
        """The standard normal prior in the network's floating dtype and on its device: the
        user's ``Generator(net.double())`` drew float32 latents into a float64 network, which
        failed with torch's "mat1 and mat2 must have the same dtype"."""
        prior = StandardNormal(latent_dim)
        ref = next((p for p in net.parameters() if p.is_floating_point()), None)
        return prior if ref is None else prior.to(device=ref.device, dtype=ref.dtype)

    def context(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """The context passed to the networks for labels ``y``: one-hot for integer labels,
        ``y`` itself when it is a float tensor, ``None`` for an unconditional generator.

        Example:
            >>> from pyro_gen.nn import MLPGenerator
            >>> gen = Generator(MLPGenerator(2, (2,), (8,), context_dim=3), num_classes=3)
            >>> gen.context(torch.tensor([2]))
            tensor([[0., 0., 1.]])
        """
        if self.num_classes is None:
            if y is not None:
                raise ValueError("y was given but this generator is not conditional (num_classes)")
            return None
        if y is None:
            raise ValueError(
                "this conditional generator needs labels: call the model with y=labels (in fit, "
                "pass the data as a dict {'x': images, 'y': labels})"
            )
        if y.is_floating_point():
            return y
        labels = y.long()
        # One read of a flag that stays False, where F.one_hot's own range check reads the
        # largest label, a value that changes from batch to batch (and would make a
        # recorded run of the model fall back: pyro_gen.gan.recorded).
        if bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise ValueError(
                f"labels y must be whole numbers in 0..{self.num_classes - 1} "
                f"(num_classes={self.num_classes}), got {int(labels.min())}..{int(labels.max())}"
            )
        classes = torch.arange(self.num_classes, device=labels.device)
        return (labels.unsqueeze(-1) == classes).to(self._prior_dtype())

    def _prior_tensor(self) -> torch.Tensor | None:
        return next(iter([*self.prior.buffers(), *self.prior.parameters()]), None)

    def _prior_dtype(self) -> torch.dtype:
        tensor = self._prior_tensor()
        return tensor.dtype if tensor is not None else torch.get_default_dtype()

    def _prior_device(self) -> torch.device:
        tensor = self._prior_tensor()
        return tensor.device if tensor is not None else torch.device("cpu")

    def _check(self, x: torch.Tensor) -> None:
        n = len(self.event_shape)
        if x.dim() != n + 1 or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"site {OBS!r}: expected data of shape (batch, "
                f"{', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}"
            )

    @changes_only_tensors
    def update_average(self, *_: Any) -> None:
        """Moves the averaged weights toward the current ones; call it after each optimizer
        step (its arguments are ignored, so it is also a ``fit`` step callback).

        Example:
            >>> from pyro_gen.nn import MLPGenerator
            >>> gen = Generator(MLPGenerator(2, (2,), (8,)), average=0.999)
            >>> gen.update_average()
            >>> int(gen.average.num_updates)
            1
        """
        if self.average is None:
            raise ValueError(
                "this generator keeps no average of its weights: build it with "
                "Generator(..., average=0.999)"
            )
        self.average.update(nn.ModuleList([self.net, self.prior]))

    def _networks(self, averaged: bool) -> tuple[nn.Module, nn.Module]:
        """The network and prior to generate with: the averaged copies when ``averaged`` and
        the average has had an update (one read of it), the generator's own otherwise."""
        if averaged and self.average is not None and self.average.has_average():
            return self.average.module[0], self.average.module[1]
        return self.net, self.prior

    def generate(
        self, z: torch.Tensor, context: torch.Tensor | None = None, *, averaged: bool = False
    ) -> torch.Tensor:
        """:math:`G(z)`, the network's output for latent codes ``z`` (with the averaged
        weights when ``averaged`` and the generator keeps an average that has had an
        update)."""
        return self._generate(self._networks(averaged)[0], z, context)

    def _generate(
        self, net: nn.Module, z: torch.Tensor, context: torch.Tensor | None
    ) -> torch.Tensor:
        try:
            return net(z) if context is None else net(z, context)
        except RuntimeError as err:
            want = next((p.dtype for p in net.parameters() if p.is_floating_point()), None)
            if want is None or want == z.dtype:
                raise
            # a network converted after the generator was built (gen.net.double()), or a
            # prior of the user's in another dtype: torch's error named neither
            raise TypeError(
                f"the generator's network has {str(want).removeprefix('torch.')} parameters "
                f"but its prior draws {str(z.dtype).removeprefix('torch.')} latents z; convert "
                f"the whole generator (gen.to({want})) so the prior follows"
            ) from err

    def model(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        num_samples: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """:math:`z \\sim p(z),\\ x = G(z)`; the site ``"x"`` is observed when ``x`` is given.

        Without ``x`` it generates ``num_samples`` examples (default 1), or one per label (or
        context row) of ``y`` for a conditional generator. Extra keyword arguments are
        ignored, so the model takes what its guide takes.
        """
        register_module(self.prefix + "generator", self.net)
        register_module(self.prefix + "prior", self.prior)
        context = self.context(y)
        if x is not None:
            self._check(x)
            batch = x.shape[0]
        elif context is not None:
            batch = generated_rows("Generator", context, y, num_samples)
        else:
            batch = num_samples or 1
        net, prior = self._networks(averaged=not self.training)
        # the caller's plate over these examples, if any, is the model's (Pyro's minibatch
        # idiom: its N/B scale then applies to the adversarial loss, as to an ELBO)
        with data_plate(batch, "Generator", DATA_PLATE):
            z = pyro.sample(LATENT, prior(context=context))
            value = self._generate(net, z, context)
            return pyro.sample(OBS, dist.Delta(value, event_dim=len(self.event_shape)), obs=x)

    def guide(self, *args: Any, **kwargs: Any) -> None:
        """The empty guide: ``z`` comes from the prior."""

    @torch.no_grad()
    def sample(self, num_samples: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``num_samples`` generated examples, shape ``(num_samples, *event_shape)``, from
        the averaged weights when the generator keeps an average (once updated). A
        conditional generator given no labels draws every class in turn
        (``y = arange(num_samples) % num_classes``), so that ``load(run).sample(n)`` works
        for every generator.

        Example:
            >>> from pyro_gen.nn import MLPGenerator
            >>> gen = Generator(MLPGenerator(2, (2,), (8,), context_dim=3), num_classes=3)
            >>> gen.sample(4).shape
            torch.Size([4, 2])
        """
        num_samples = sample_count(num_samples)
        if y is None and self.num_classes is not None:
            y = torch.arange(num_samples, device=self._prior_device()) % self.num_classes
        context = self.context(y)
        if context is not None and context.shape[0] != num_samples:
            raise ValueError(f"y must hold one label per sample ({num_samples})")
        net, prior = self._networks(averaged=True)
        p_z = prior(context=context)
        z = p_z.sample((num_samples,) if p_z.batch_shape == () else ())
        return self._generate(net, z, context)
