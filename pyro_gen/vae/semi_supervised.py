"""Semi-supervised learning with the M2 model: the class label is a discrete latent variable.

The generative model is :math:`y \\sim \\mathrm{Cat}(1/C)`, :math:`z \\sim \\mathcal{N}(0, I)`,
:math:`x \\sim p(x \\mid y, z)`, and the guide is :math:`q(y \\mid x)\\,q(z \\mid x, y)`. For a
labelled example :math:`y` is observed and the bound is the conditional ELBO

.. math:: \\mathcal{L}(x, y) = \\mathbb{E}_{q(z \\mid x, y)}[\\log p(x \\mid y, z) + \\log p(y)
          + \\log p(z) - \\log q(z \\mid x, y)];

for an unlabelled one the label is summed out under the guide, exactly,

.. math:: \\mathcal{U}(x) = \\sum_{y=1}^C q(y \\mid x)\\,\\mathcal{L}(x, y)
          + \\mathcal{H}[q(y \\mid x)],

which is what :class:`~pyro.infer.TraceEnum_ELBO` computes when the guide marks ``y`` for
parallel enumeration. Because :math:`\\mathcal{L}(x, y)` does not train the classifier
:math:`q(y \\mid x)` on labelled data, Kingma et al. add :math:`\\alpha \\log q(y \\mid x)`
for every labelled example; here it is a ``pyro.factor`` site of the model, so one objective
(``TraceEnum_ELBO``) trains everything through :func:`pyro_gen.infer.fit`. The factor is
left out in evaluation mode (``module.eval()``, as the evaluation helpers set it), so
reported bounds are bounds.

References:
    Kingma, Rezende, Mohamed & Welling, Semi-Supervised Learning with Deep Generative
    Models, NeurIPS 2014, arXiv:1406.5298.
    Pyro's SS-VAE tutorial (https://pyro.ai/examples/ss-vae.html).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyro_gen.nn.mlp import layer_widths
from pyro_gen.nn.registration import register_module
from pyro_gen.plates import check_sample_count, data_plate
from pyro_gen.transforms._base import PicklableModule, as_event_shape, sample_count
from pyro_gen.vae._utils import mlp, numel
from pyro_gen.vae.decoders import MLPDecoder
from pyro_gen.vae.encoders import MLPEncoder
from pyro_gen.vae.likelihoods import Likelihood
from pyro_gen.vae.sites import DATA_PLATE, LATENT, OBS

#: Name of the label site.
LABEL = "y"
#: Name of the classification factor site (training mode, labelled batches only).
CLASSIFICATION = "classification"


def check_labels(
    y: torch.Tensor, num_classes: int, batch: int, batch_dims: bool = False
) -> torch.Tensor:
    """The labels ``y`` as a long tensor, after checking them.

    With ``batch_dims`` the examples' labels are ``y``'s last dim and dims left of it are
    batch dims (one per ``Predictive(parallel=True)`` sample of labels drawn from a latent).

    Raises:
        ValueError: a label lies outside ``0 .. num_classes - 1`` or there is not one per
            example.
        TypeError: the labels are not integers.

    Example:
        >>> check_labels(torch.tensor([0, 2]), 3, 2)
        tensor([0, 2])
    """
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.dtype == torch.bool:
        kind = y.dtype if isinstance(y, torch.Tensor) else type(y).__name__
        raise TypeError(f"y must be a tensor of integer class labels, got {kind}")
    if (y.shape[-1:] if batch_dims else y.shape) != (batch,):
        raise ValueError(
            f"y must hold one label per example, shape ({batch},), got {tuple(y.shape)}"
        )
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"labels y must lie in 0..{num_classes - 1} (num_classes={num_classes}), got "
            f"values in {int(y.min())}..{int(y.max())}; leave y out for unlabelled examples"
        )
    return y.long()


class SSVAE(PicklableModule):
    """The M2 semi-supervised VAE, :math:`p(y)\\,p(z)\\,p(x \\mid y, z)` with guide
    :math:`q(y \\mid x)\\,q(z \\mid x, y)`.

    Call ``model(x, y)`` / ``guide(x, y)`` with labels for a labelled batch and
    ``model(x)`` / ``guide(x)`` without them for an unlabelled one; train with
    ``TraceEnum_ELBO(max_plate_nesting=1)``, which sums the label out of unlabelled batches
    (see the module docstring). :func:`semi_supervised_batches` makes the mixed labelled and
    unlabelled batches that :func:`pyro_gen.infer.fit` takes; its default shows each example
    once an epoch, the weighting of Kingma et al.'s objective.

    Args:
        event_shape: shape of one example.
        num_classes: :math:`C`.
        z_dim: size of the continuous latent (the "style").
        hidden_dims: hidden sizes of the three networks (classifier, encoder, decoder).
        likelihood: the decoder's likelihood, name or object; ``"gaussian_learned"`` for
            real-valued examples such as the features of M1+M2
            (:mod:`pyro_gen.vae.stacked`).
        alpha: weight :math:`\\alpha` of :math:`\\log q(y \\mid x)` on labelled examples.
        init_scale: standard deviation of the Normal draws that initialize the weights and
            biases of the three networks' hidden layers (their output layers keep PyTorch's
            initialization), as Pyro's SS-VAE example does with 0.001; None keeps PyTorch's
            initialization everywhere. Small hidden weights start every network nearly
            constant in its input; on MNIST with 100 labels they lowered the test error
            after 5 epochs from 50.6% to 33.2% (benchmarks/RESULTS.md).
        name: prefix of the networks' names in Pyro's param store.

    Example:
        >>> m2 = SSVAE((8, 8), num_classes=3, z_dim=2, hidden_dims=(16,))
        >>> elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
        >>> x = torch.rand(4, 8, 8).round()
        >>> unlabelled = elbo.loss(m2.model, m2.guide, x)
        >>> labelled = elbo.loss(m2.model, m2.guide, x, y=torch.tensor([0, 1, 2, 0]))
        >>> m2.classify(x).shape
        torch.Size([4])
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (28, 28),
        num_classes: int = 10,
        z_dim: int = 50,
        hidden_dims: Sequence[int] = (500,),
        likelihood: str | Likelihood = "bernoulli",
        alpha: float = 50.0,
        init_scale: float | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not alpha >= 0:
            raise ValueError(f"alpha must be non-negative, got {alpha!r}")
        if init_scale is not None and not init_scale > 0:
            raise ValueError(f"init_scale must be positive or None, got {init_scale!r}")
        self.event_shape = as_event_shape(event_shape)
        self.num_classes, self.z_dim, self.alpha = num_classes, z_dim, float(alpha)
        hidden_dims = tuple(layer_widths(hidden_dims))
        self.classifier = mlp(numel(self.event_shape), hidden_dims, num_classes)
        self.encoder = MLPEncoder(self.event_shape, z_dim, hidden_dims, context_dim=num_classes)
        self.decoder = MLPDecoder(
            z_dim, self.event_shape, hidden_dims, likelihood, context_dim=num_classes
        )
        if init_scale is not None:
            hidden = [*self.classifier[:-1], *self.encoder.trunk, *self.decoder.net[:-1]]
            for layer in hidden:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, 0.0, init_scale)
                    nn.init.normal_(layer.bias, 0.0, init_scale)
        self.register_buffer("prior_logits", torch.zeros(num_classes))
        self.prefix = f"{name}." if name else ""

    def _check(
        self, x: torch.Tensor | None, y: torch.Tensor | None, needs_x: str = ""
    ) -> torch.Tensor | None:
        """The checked labels; ``x`` may be None (the model generating) unless ``needs_x``
        names the caller that encodes it."""
        if x is None:
            if needs_x:
                raise ValueError(f"SSVAE.{needs_x} needs the examples x (it encodes them)")
            if y is None:
                return None
            # generating: the examples follow the labels' last dim, whatever batch dims y
            # carries on its left (a draw per Predictive(parallel=True) sample); its first dim
            # refused such labels ("shape (S,), got (S, N)")
            return check_labels(y, self.num_classes, y.shape[-1] if y.dim() else 1, True)
        n = len(self.event_shape)
        if x.dim() != n + 1 or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"expected x of shape (batch, {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(x.shape)}"
            )
        return None if y is None else check_labels(y, self.num_classes, x.shape[0])

    def _one_hot(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.num_classes).to(like.dtype)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the classifier :math:`q(y \\mid x)`, shape ``(batch, C)``."""
        return self.classifier(x.reshape(x.shape[0], -1).to(self.prior_logits.dtype))

    def model(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        num_samples: int | None = None,
    ) -> torch.Tensor:
        """:math:`y \\sim p(y)` (observed when given), :math:`z \\sim p(z)`,
        :math:`x \\sim p(x \\mid y, z)`, and in training mode on labelled batches the factor
        :math:`\\alpha \\log q(y \\mid x)`. Without ``x`` it generates (as every model of
        the family does, for ``Predictive``): one example per label of ``y``, or
        ``num_samples`` (default 1).

        Example:
            >>> m2 = SSVAE((8, 8), num_classes=3, z_dim=2, hidden_dims=(16,))
            >>> m2.model(num_samples=5).shape, m2.model(y=torch.tensor([0, 2])).shape
            (torch.Size([5, 8, 8]), torch.Size([2, 8, 8]))
        """
        y = self._check(x, y)
        register_module(self.prefix + "decoder", self.decoder)
        obs = None if x is None else self.decoder.likelihood.prepare(x)
        if x is not None:
            batch = x.shape[0]
        elif y is not None:
            batch = y.shape[-1]
            check_sample_count("SSVAE", num_samples, batch, "label")
        else:
            batch = sample_count(num_samples or 1)
        # x's device where it is given (the modules' otherwise), the prior's dtype
        like = self.prior_logits if x is None else x
        with data_plate(batch, type(self).__name__, DATA_PLATE):
            label = pyro.sample(LABEL, dist.Categorical(logits=self.prior_logits), obs=y)
            zeros = like.new_zeros(self.z_dim, dtype=self.prior_logits.dtype)
            z = pyro.sample(LATENT, dist.Normal(zeros, 1.0).to_event(1))
            out = pyro.sample(OBS, self.decoder(z, context=self._one_hot(label, z)), obs=obs)
            if x is not None and y is not None and self.alpha > 0 and self.training:
                register_module(self.prefix + "classifier", self.classifier)
                log_q = dist.Categorical(logits=self.logits(x)).log_prob(y)
                pyro.factor(CLASSIFICATION, self.alpha * log_q)
        return out

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """:math:`y \\sim q(y \\mid x)`, enumerated in parallel, when ``y`` is not given;
        then :math:`z \\sim q(z \\mid x, y)`."""
        y = self._check(x, y, needs_x="guide")
        register_module(self.prefix + "classifier", self.classifier)
        register_module(self.prefix + "encoder", self.encoder)
        with data_plate(x.shape[0], type(self).__name__, DATA_PLATE):
            if y is None:
                y = pyro.sample(
                    LABEL,
                    dist.Categorical(logits=self.logits(x)),
                    infer={"enumerate": "parallel"},
                )
            loc, scale, _ = self.encoder(x, self._one_hot(y, self.prior_logits))
            pyro.sample(LATENT, dist.Normal(loc, scale).to_event(1))

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable label under :math:`q(y \\mid x)`, shape ``(batch,)``."""
        self._check(x, None, needs_x="classify")
        return self.logits(x).argmax(-1)

    @torch.no_grad()
    def sample(self, num_samples: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder means for ``num_samples`` draws of :math:`z` (and of :math:`y` unless the
        labels ``y`` are given), shape ``(num_samples, *event_shape)``."""
        num_samples = sample_count(num_samples)
        if y is None:
            y = dist.Categorical(logits=self.prior_logits).sample((num_samples,))
        y = check_labels(y, self.num_classes, num_samples)
        z = torch.randn(num_samples, self.z_dim, device=self.prior_logits.device)
        return self.decoder.mean(z, self._one_hot(y, z))


def semi_supervised_batches(
    x_labelled: torch.Tensor,
    y_labelled: torch.Tensor,
    x_unlabelled: torch.Tensor,
    batch_size: int = 100,
    labelled_batch_size: int | None = None,
    labelled_passes: float = 1.0,
    generator: torch.Generator | None = None,
    labelled_scale: torch.Tensor | None = None,
    unlabelled_scale: torch.Tensor | None = None,
    names: tuple[str, str] = ("x", "y"),
) -> Callable[[], Iterator[dict[str, torch.Tensor]]]:
    """Batches for :func:`pyro_gen.infer.fit`: a function returning, each epoch, one pass
    over the shuffled unlabelled examples (``{"x": ...}``) with ``labelled_passes`` passes
    over the labelled ones (``{"x": ..., "y": ...}``) spread evenly between them.

    Kingma et al.'s objective sums the bound over *all* examples, each once, so with the
    default ``labelled_passes=1`` every example, labelled or not, is seen once an epoch: with
    100 labels among 60,000 images that is one labelled batch in 600, and the unlabelled
    bound does most of the teaching (Pyro's SS-VAE example batches the same way). Showing
    the few labelled examples more often (``labelled_passes`` k > 1) weights their bound and
    the classification term k-fold; in short runs that gave the lower test error
    (benchmarks/RESULTS.md).

    With ``labelled_scale`` and ``unlabelled_scale`` the examples are the means of Normals
    with those standard deviations and every batch is a fresh draw from them: M1+M2
    (:mod:`pyro_gen.vae.stacked`) passes the mean and scale of M1's posterior, so that M2
    sees a new :math:`z_1 \\sim q(z_1 \\mid x)` each time it sees an image, as in Kingma
    et al.'s code.

    Args:
        x_labelled: labelled examples, shape ``(L, *event_shape)``.
        y_labelled: their labels, shape ``(L,)``.
        x_unlabelled: unlabelled examples, shape ``(U, *event_shape)``.
        batch_size: size of an unlabelled batch.
        labelled_batch_size: size of a labelled batch (default ``min(batch_size, L)``).
        labelled_passes: passes over the labelled examples per epoch (at least one batch).
        generator: random generator for the shuffles (and the draws).
        labelled_scale: standard deviations of the labelled examples, their shape; both
            scales or neither.
        unlabelled_scale: standard deviations of the unlabelled examples, their shape.
        names: the model's keyword arguments for the examples and the labels, e.g.
            ``("xs", "ys")`` for a model written as Pyro's SS-VAE example,
            ``model(xs, ys=None)``.

    Raises:
        ValueError: the labels do not match the labelled examples, a set is empty,
            ``labelled_passes`` is not positive, or a scale is given alone, has another shape
            than its examples or is negative.

    Example:
        >>> batches = semi_supervised_batches(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]),
        ...                                   torch.zeros(10, 2), batch_size=2)
        >>> [sorted(b) for b in batches()]
        [['x'], ['x'], ['x'], ['x', 'y'], ['x'], ['x'], ['x', 'y']]
        >>> batches = semi_supervised_batches(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]),
        ...                                   torch.zeros(10, 2), batch_size=5,
        ...                                   labelled_passes=2)
        >>> [sorted(b) for b in batches()]
        [['x'], ['x', 'y'], ['x'], ['x', 'y']]
    """
    if (
        not isinstance(names, tuple)
        or len(names) != 2
        or not all(isinstance(n, str) and n.isidentifier() for n in names)
        or names[0] == names[1]
    ):
        raise ValueError(
            f"names must be two different keyword argument names, the examples' then the "
            f"labels' (e.g. ('xs', 'ys')); got {names!r}"
        )
    x_name, y_name = names
    if x_labelled.shape[0] != y_labelled.shape[0]:
        raise ValueError(
            f"{x_labelled.shape[0]} labelled examples but {y_labelled.shape[0]} labels"
        )
    if x_labelled.shape[0] == 0 or x_unlabelled.shape[0] == 0:
        raise ValueError("need at least one labelled and one unlabelled example")
    if not labelled_passes > 0:
        raise ValueError(f"labelled_passes must be positive, got {labelled_passes!r}")
    if (labelled_scale is None) != (unlabelled_scale is None):
        raise ValueError("give both labelled_scale and unlabelled_scale, or neither")
    for name, scale, x in (
        ("labelled_scale", labelled_scale, x_labelled),
        ("unlabelled_scale", unlabelled_scale, x_unlabelled),
    ):
        if scale is not None and (scale.shape != x.shape or bool((scale < 0).any())):
            raise ValueError(
                f"{name} must hold a non-negative standard deviation per entry of its "
                f"examples, shape {tuple(x.shape)}; got shape {tuple(scale.shape)}"
                + (", with negative entries" if scale.shape == x.shape else "")
            )
    labelled_batch_size = labelled_batch_size or min(batch_size, x_labelled.shape[0])
    num_unlabelled = math.ceil(x_unlabelled.shape[0] / batch_size)
    per_pass = math.ceil(x_labelled.shape[0] / labelled_batch_size)
    num_labelled = max(1, round(labelled_passes * per_pass))

    def labelled_batches() -> Iterator[torch.Tensor]:
        while True:  # a fresh shuffle for every pass over the labelled examples
            n = x_labelled.shape[0]
            yield from torch.randperm(n, generator=generator).split(labelled_batch_size)

    def draw(x: torch.Tensor, scale: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor:
        mean = x[idx]
        if scale is None:
            return mean
        noise = torch.randn(mean.shape, generator=generator, dtype=x.dtype)
        return mean + scale[idx] * noise.to(x.device)

    def epoch() -> Iterator[dict[str, torch.Tensor]]:
        order = torch.randperm(x_unlabelled.shape[0], generator=generator)
        labelled = labelled_batches()
        for i, idx in enumerate(order.split(batch_size)):
            yield {x_name: draw(x_unlabelled, unlabelled_scale, idx)}
            # labelled batch number k goes after unlabelled batch (k + 1) * U_b / L_b - 1,
            # so they are spread evenly and the epoch ends on one
            due = (i + 1) * num_labelled // num_unlabelled - i * num_labelled // num_unlabelled
            for _ in range(due):
                j = next(labelled)
                yield {x_name: draw(x_labelled, labelled_scale, j), y_name: y_labelled[j]}

    return epoch


__all__ = ["CLASSIFICATION", "LABEL", "SSVAE", "check_labels", "semi_supervised_batches"]
