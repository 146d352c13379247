"""The adversarial loss object: a Pyro loss that owns its discriminator and trains it.

An :class:`AdversarialLoss` is used where Pyro takes a loss: ``pyro_gen.infer.fit(...,
loss=...)``, or ``pyro.infer.SVI(model, guide, optim, loss=...)``. It follows the idiom of
:class:`pyro.infer.EnergyDistance`: the model's observed site is the data, and tracing the
model with its observations removed (``poutine.uncondition``) gives generated examples of
the same site. Each training call first takes ``n_critic`` optimizer steps on the
discriminator (its own torch optimizer, not the training loop's Pyro optimizer), then returns the
generator's loss, whose gradient reaches only the parameters the model registered with
``pyro.module``: the Pyro optimizer of the training loop updates the generator alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.optim import PyroOptim
from pyro.optim.lr_scheduler import PyroLRScheduler
from torch import nn
from torch.nn import functional as F

from pyro_gen.gan.batch import AdversarialBatch, as_generated_shape, flat, unmasked
from pyro_gen.gan.generator import Generator
from pyro_gen.gan.labels import context_like, model_labels
from pyro_gen.gan.loss_object import PyroLoss
from pyro_gen.gan.observed import ObservedSite, observed_sites, unconditioned_traces
from pyro_gen.gan.recorded import RecordedRuns

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def fused_adam(params: Iterable[nn.Parameter], **kwargs: Any) -> torch.optim.Adam:
    """``torch.optim.Adam`` with its fused kernel (one call updates every parameter; the same
    update as the default implementation), or the default where the parameters' device or
    dtype has no fused kernel.

    Example:
        >>> fused_adam(nn.Linear(2, 1).parameters(), lr=1e-3).defaults["fused"]
        True
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, **kwargs, fused=True)
    except RuntimeError:  # e.g. a device without fused kernels
        return torch.optim.Adam(params, **kwargs)


def build_optimizer(optim: Any, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The discriminator's torch optimizer from ``optim``: a factory of its parameters
    (``functools.partial(torch.optim.Adam, lr=2e-4)``), or the Pyro optimizer a Pyro user
    hands ``SVI`` (``pyro.optim.Adam({"lr": 2e-4})``), built with its torch class and
    arguments. A Pyro optimizer was called as a factory and gave ``None``, and the first
    step failed with "'NoneType' object has no attribute 'zero_grad'".

    Example:
        >>> import pyro
        >>> opt = build_optimizer(pyro.optim.Adam({"lr": 0.01}), nn.Linear(2, 1).parameters())
        >>> type(opt).__name__, opt.defaults["lr"]
        ('Adam', 0.01)
    """
    params = list(params)
    if isinstance(optim, PyroOptim):
        if isinstance(optim, PyroLRScheduler) or callable(optim.pt_optim_args):
            raise ValueError(
                "optim: a Pyro scheduler or per-parameter arguments cannot build the "
                "discriminator's optimizer (nothing would step the scheduler; its parameters "
                "have no Pyro names): pass pyro.optim.Adam({...}) or a factory such as "
                "functools.partial(torch.optim.Adam, lr=2e-4)"
            )
        if optim.pt_clip_args:
            raise ValueError(
                f"optim: the Pyro optimizer's clip_args {optim.pt_clip_args} would not be "
                "applied to the discriminator: pass one without clip_args"
            )
        return optim.pt_optim_constructor(params, **optim.pt_optim_args)
    built = optim(params) if callable(optim) else None
    if not isinstance(built, torch.optim.Optimizer):
        got = (
            f"an optimizer already built on parameters ({type(optim).__name__})"
            if isinstance(optim, torch.optim.Optimizer)
            else f"{optim!r}, which returned {type(built).__name__}"
            if callable(optim)
            else repr(optim)
        )
        raise TypeError(
            "optim must build the discriminator's torch optimizer from its parameters, e.g. "
            "functools.partial(torch.optim.Adam, lr=2e-4), or be a Pyro optimizer such as "
            f"pyro.optim.Adam({{'lr': 2e-4}}); got {got}"
        )
    return built


def _check_differentiable(batch: AdversarialBatch) -> None:
    """Refuses to train a generator whose examples are drawn without a reparameterized
    sampler: no gradient reaches it, and training would silently move the discriminator
    alone (a Bernoulli generator's weights stayed exactly where they started)."""
    if batch.discrete is None or batch.fake.requires_grad:
        return
    raise ValueError(
        f"the model's site {batch.site!r} is drawn from {batch.discrete}, which has no "
        "reparameterized sampler: its generated examples carry no gradient to the generator, "
        "so an adversarial loss would train the discriminator alone. Generate the example as "
        "a differentiable function of the latents, pyro.sample(name, dist.Delta(G(z), "
        "event_dim=...), obs=x), or from a relaxed distribution "
        "(dist.RelaxedBernoulliStraightThrough, dist.RelaxedOneHotCategoricalStraightThrough)"
    )


def _check_generator_learns(batch: AdversarialBatch, model: Callable[..., Any]) -> None:
    """Refuses a training call whose generator is a :class:`~pyro_gen.gan.Generator` in eval
    mode with an average: it then generates with its averaged weights, which carry no
    gradient, so the network stayed exactly where it was while the discriminator trained
    (a ``gen.eval()`` left from sampling or evaluating; ``fit`` keeps the user's modes).
    Refused before the average's first update too, when the network's own weights still
    stand in for it: otherwise the first step would train and the next, after
    ``update_average``, fail."""
    owner = getattr(model, "__self__", None)
    if not isinstance(owner, Generator) or owner.average is None or owner.training:
        return
    raise RuntimeError(
        "the Generator is in eval mode, where it generates with its averaged weights "
        "(average=), which carry no gradient: training would leave its network as it is. "
        "Call gen.train() before training (fit, SVI.step); gen.sample() uses the averaged "
        "weights in either mode"
    )


def _last_layer(module: nn.Module) -> nn.Module:
    leaves = [m for m in module.modules() if not list(m.children())]
    return leaves[-1] if leaves else module


class AdversarialLoss(PyroLoss):
    """Base class of the adversarial objectives: a Pyro loss object owning a discriminator.

    Subclasses give :meth:`discriminator_loss` (mean over the batch, minimised by the
    discriminator) and :meth:`generator_loss` (one value per example, minimised by the
    generator). The discriminator's parameters and its optimizer's state are in this
    module's ``state_dict`` (the optimizer's through ``get_extra_state``), so a checkpoint
    of the loss, as :func:`pyro_gen.infer.fit` writes one, resumes adversarial training
    exactly. A plain ``nn.Module`` discriminator never enters Pyro's param store. A
    ``PyroModule`` one does, as every ``PyroModule`` registers the parameters it reads, and
    the training loop's Pyro optimizer then keeps a state for them; no gradient of the
    generator's loss reaches them, so only the loss's own optimizer moves them (the same
    steps as the ``nn.Module``).

    With gradients enabled (``loss_and_grads``: Pyro's ``SVI.step``, ``fit``), each call
    takes ``n_critic`` discriminator steps on the batch (fresh generated examples each
    time, the last of them the ones the generator's loss then scores) before returning the
    generator's loss; through ``loss`` or under ``torch.no_grad()`` it only evaluates. A
    training call in eval mode (``loss.eval()``) is refused, as it would leave the
    discriminator untrained; a discriminator frozen with ``requires_grad_(False)`` is not
    stepped (in either mode), so the generator trains against it. The generator's loss is
    summed over the data plate (with the plate's scale), as Pyro's ELBO is, so ``fit``'s
    ``train_loss`` is a value per example. There is no ``num_particles``: for several
    generated examples per data example, write the particles as a plate outside the data
    plate (``pyro.plate("particles", n, dim=-2)``; the data broadcast over it, and
    ``poutine.scale(scale=1 / n)`` averages them as Pyro's vectorized ELBO does).

    Conditional GANs pass labels as ``y``, by name or as the model's argument ``y`` by
    position (``model(x, y)`` stepped as ``svi.step(x, y)``, or fit's ``(x, y)`` batches), or
    under the name the user's model gives them (``labels="digit"`` for ``model(x, digit)``):
    the discriminator gets them as its context, one-hot with ``discriminator.context_dim``
    classes when they are integers (a network without a ``context_dim`` attribute gets
    ``y`` as given: integer labels for an ``nn.Embedding`` stay integers).

    Args:
        discriminator: a module ``D(x)`` (or ``D(x, context)``) returning one unbounded
            score per example (a logit, or a critic value); it must not end in a sigmoid.
        optim: builds the discriminator's torch optimizer from its parameters, e.g.
            ``functools.partial(torch.optim.Adam, lr=2e-4)``, or a Pyro optimizer such as
            ``pyro.optim.Adam({"lr": 2e-4})`` (its torch class and arguments); default per
            loss.
        n_critic: discriminator steps per generator step.
        site: the observed site the discriminator judges; default the model's only one.
        labels: the name of the model's argument holding a conditional GAN's labels.
        record: run the model's generating run from a recording, replayed each step
            (:class:`~pyro_gen.gan.recorded.RecordedRuns`: the same examples and gradients as
            the Pyro run, without Pyro's per-site work; models it cannot stand for run
            through Pyro, with one log line saying why); ``False``: every run through Pyro.
            Python numbers the model reads are constants of a recording: after changing
            one (an annealed noise scale), call ``loss.runs.clear()``.
    """

    #: what a discriminator ending in a sigmoid is told
    _sigmoid_message = (
        "returns probabilities (it ends in a Sigmoid): the loss applies the sigmoid itself, "
        "in a numerically stable way; remove the final Sigmoid so it returns logits"
    )

    def __init__(
        self,
        discriminator: nn.Module,
        *,
        optim: OptimizerFactory | None = None,
        n_critic: int = 1,
        site: str | None = None,
        labels: str = "y",
        record: bool = True,
    ) -> None:
        super().__init__()
        # a model written model(x, digit) had its labels found only as y: a conditional
        # discriminator was refused with "called without labels" whatever the call
        if not isinstance(labels, str) or not labels.isidentifier():
            raise ValueError(
                f"labels must name the model's argument holding the labels (a string such as "
                f"'y' or 'digit'), got {labels!r}"
            )
        if not isinstance(discriminator, nn.Module):
            raise TypeError(f"discriminator must be a torch.nn.Module, got {type(discriminator)}")
        if isinstance(_last_layer(discriminator), nn.Sigmoid | nn.Softmax):
            raise ValueError(f"the discriminator {self._sigmoid_message}")
        if isinstance(n_critic, bool) or not isinstance(n_critic, int) or n_critic < 1:
            raise ValueError(f"n_critic must be a positive whole number, got {n_critic!r}")
        self.discriminator = discriminator
        self.n_critic = n_critic
        self.site = site
        self.labels = labels
        factory = optim if optim is not None else self.default_optim
        self.optimizer = build_optimizer(factory, discriminator.parameters())
        self.last_discriminator_loss: torch.Tensor | None = None
        # the model's generating run, replayed from a recording (not module state)
        self.runs = RecordedRuns(backend="auto" if record else "pyro")

    # -- what each objective defines ----------------------------------------------------
    @staticmethod
    def default_optim(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam with the DCGAN settings (learning rate 2e-4, beta1 0.5), fused."""
        return fused_adam(params, lr=2e-4, betas=(0.5, 0.999))

    def discriminator_loss(
        self, real_score: torch.Tensor, fake_score: torch.Tensor
    ) -> torch.Tensor:
        """The discriminator's loss (a scalar, mean over examples)."""
        raise NotImplementedError

    def generator_loss(self, fake_score: torch.Tensor) -> torch.Tensor:
        """The generator's loss, one value per generated example."""
        raise NotImplementedError

    def penalty(self, batch: AdversarialBatch) -> torch.Tensor | float:
        """A regularizer added to the discriminator's loss (none by default)."""
        return 0.0

    def after_discriminator_step(self) -> None:
        """Runs after each discriminator update (weight clipping, for one)."""

    # -- the Pyro loss protocol ---------------------------------------------------------
    def forward(self, model: Callable[..., Any], guide: Callable[..., Any], *args, **kwargs):
        """Trains the discriminator (in training mode, with gradients enabled), then returns
        the generator's loss as a differentiable scalar, as Pyro's ``EnergyDistance`` does.

        The last discriminator update and the generator's loss share one generated batch
        (one run of the model per step when ``n_critic=1``, as in PyTorch's DCGAN example):
        the discriminator sees it detached, the generator's loss scores it again with the
        updated discriminator."""
        training = self._training_call()
        train = training and self.trains_discriminator()
        if train:
            for _ in range(self.n_critic - 1):
                self.discriminator_step(model, guide, *args, **kwargs)
        batch = self.batch(model, guide, *args, **kwargs)
        if training:
            _check_generator_learns(batch, model)
        if train:
            _check_differentiable(batch)
            self.update_discriminator(batch)
        per_example = self.generator_term(batch)
        return scale_and_mask(per_example, batch.scale, batch.mask).sum()

    def trains_discriminator(self) -> bool:
        """Whether a training call steps the discriminator: not when every one of its
        parameters is frozen (``requires_grad_(False)``), the way to train a generator
        against a fixed discriminator."""
        return any(p.requires_grad for p in self.discriminator.parameters())

    def generator_term(self, batch: AdversarialBatch) -> torch.Tensor:
        """The generator's loss per example of ``batch``, differentiable in the generated
        examples and not in the discriminator's parameters."""
        flags = [p.requires_grad for p in self.discriminator.parameters()]
        # The generator's gradient flows through the discriminator's input only.
        self.discriminator.requires_grad_(False)
        try:
            fake_score = self.score(batch.fake, batch)
        finally:
            for p, flag in zip(self.discriminator.parameters(), flags):
                p.requires_grad_(flag)
        return self.generator_loss(fake_score)

    # -- the pieces ---------------------------------------------------------------------
    def discriminator_step(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args, **kwargs
    ) -> torch.Tensor:
        """One optimizer step of the discriminator on real data and freshly generated
        examples; returns its loss before the step."""
        with torch.no_grad():
            batch = self.batch(model, guide, *args, **kwargs)
        return self.update_discriminator(batch)

    def update_discriminator(self, batch: AdversarialBatch) -> torch.Tensor:
        """One optimizer step of the discriminator on ``batch`` (its generated examples
        detached, so no gradient reaches the generator); returns its loss before the step.
        Examples the site's mask leaves out count for nothing, as in Pyro's ELBO."""
        batch = unmasked(batch)
        if batch.real.numel() == 0:  # every example masked out: nothing to learn from
            return batch.real.new_full((), float("nan"))
        if batch.fake.requires_grad:
            batch = dataclasses.replace(batch, fake=batch.fake.detach())
        real_score = self.score(batch.real, batch)
        fake_score = self.score(batch.fake, batch)
        loss = self.discriminator_loss(real_score, fake_score) + self.penalty(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        # only the generator's gradients are left for the training loop to see
        self.optimizer.zero_grad(set_to_none=True)
        self.after_discriminator_step()
        self.last_discriminator_loss = loss.detach()
        return self.last_discriminator_loss

    def batch(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args, **kwargs
    ) -> AdversarialBatch:
        """Real and generated examples of the observed site for one run of the model with
        its observations removed (replayed from a recording where the model allows one:
        :class:`~pyro_gen.gan.recorded.RecordedRuns`)."""
        sites = self.runs(model, guide, args, kwargs)
        return self.batch_of(sites, self._context(model_labels(model, args, kwargs, self.labels)))

    @staticmethod
    def unconditioned_trace(
        model: Callable[..., Any], guide: Callable[..., Any], *args, **kwargs
    ) -> poutine.Trace:
        """The guide is traced, then the model is replayed against it with its observations
        removed, so each observed site holds a generated example and keeps the data in
        ``site["infer"]["obs"]``."""
        return unconditioned_traces(model, guide, args, kwargs)[0]

    def batch_from(self, trace: poutine.Trace, context: torch.Tensor | None) -> AdversarialBatch:
        """The real and generated examples of this loss's site in an unconditioned trace."""
        return self.batch_of(observed_sites(trace), context)

    def batch_of(
        self, sites: dict[str, ObservedSite], context: torch.Tensor | None
    ) -> AdversarialBatch:
        """The real and generated examples of this loss's site among a run's observed sites;
        ``pyro.deterministic`` sites are not data and are never picked."""
        name = self._pick_site([n for n, site in sites.items() if not site.deterministic])
        site = sites[name]
        real, fake = as_generated_shape(name, site.obs, site.value)
        rows = real.shape[real.dim() - site.event_dim - 1] if real.dim() > site.event_dim else 1
        if context is not None and context.dim() and context.shape[0] not in (1, rows):
            # a model subsampling inside (pyro.plate(..., subsample_size=B) with y[idx]) takes
            # the whole data set's labels; their rows meet the batch's in the discriminator
            raise ValueError(
                f"the labels {self.labels} hold {context.shape[0]} rows but the model's site "
                f"{name!r} has {rows} examples: the discriminator scores each example with its "
                f"own row of {self.labels}. A model that subsamples its data inside "
                "(pyro.plate(..., subsample_size=...)) takes the whole data set's labels; "
                "subsample outside it instead (fit's batch_size, or the batch's examples and "
                "labels passed to the model)"
            )
        return flat(
            AdversarialBatch(
                name, real, fake, context, site.event_dim, site.scale, site.mask, site.discrete
            )
        )

    def _pick_site(self, observed: list[str]) -> str:
        if self.site is not None:
            if self.site not in observed:
                raise ValueError(
                    f"site={self.site!r} is not an observed site of the model (observed: "
                    f"{observed}); call the model with data"
                )
            return self.site
        if len(observed) == 1:
            return observed[0]
        if not observed:
            raise ValueError(
                "the model observes no site: an adversarial loss compares the data of an "
                "observed site (obs=x) with generated examples; call the model with data"
            )
        raise ValueError(f"the model observes several sites {observed}: choose one with site=")

    def _context(self, y: torch.Tensor | None) -> torch.Tensor | None:
        context_dim = getattr(self.discriminator, "context_dim", None)
        if y is None:
            if context_dim:
                raise ValueError(
                    f"the discriminator is conditional (context_dim={context_dim}) but the "
                    f"model was called without labels {self.labels}: pass {self.labels}=labels (in "
                    f"fit, the data as a dict {{'x': ..., {self.labels!r}: ...}}); a model that "
                    "calls its labels by another name says which, e.g. labels='digit'"
                )
            return None
        if context_dim == 0:
            raise ValueError(
                f"labels {self.labels} were given but the discriminator was built with "
                "context_dim=0: a conditional GAN needs a conditional discriminator "
                "(context_dim=num_classes)"
            )
        if y.is_floating_point() or context_dim is None:
            return y
        return F.one_hot(y.long(), context_dim).to(torch.get_default_dtype())

    def score(self, x: torch.Tensor, batch: AdversarialBatch) -> torch.Tensor:
        """The discriminator's scores of ``x``, shape ``batch.batch_shape``."""
        d = self.discriminator
        expected = getattr(d, "event_shape", None)
        event_shape = tuple(x.shape[x.dim() - batch.event_dim :])
        if expected is not None and tuple(expected) != event_shape:
            raise ValueError(
                f"the discriminator takes examples of shape {tuple(expected)} but the model's "
                f"site {batch.site!r} has event shape {event_shape}: build the discriminator "
                "for the generator's output"
            )
        try:
            out = d(x) if batch.context is None else d(x, context_like(batch.context, x))
        except RuntimeError as e:  # a user's network with no event_shape to check first
            raise ValueError(
                f"the discriminator failed on site {batch.site!r} (examples of shape "
                f"{event_shape}): {e}"
            ) from e
        except TypeError as e:  # a user's network called without its labels, or with them
            if batch.context is not None:
                raise TypeError(
                    f"the discriminator was called as D(x, {self.labels}) on site "
                    f"{batch.site!r}, {self.labels} the labels the model takes as its argument "
                    f"{self.labels}, and failed: {e}. A conditional GAN's discriminator takes "
                    f"them; a model whose argument {self.labels} is not labels should call it "
                    "something else"
                ) from e
            raise TypeError(
                f"the discriminator was called as D(x) on site {batch.site!r} and failed: {e}. "
                "A conditional discriminator gets the labels the model is called with as its "
                f"argument {self.labels} (model(x, {self.labels}): svi.step(x, {self.labels}) "
                f"or {self.labels}=labels; in fit, batches (x, {self.labels}) or a dict); a "
                "model that calls its labels by another name says which, e.g. labels='digit'"
            ) from e
        shape = batch.batch_shape
        if out.shape != shape:
            if out.numel() != math.prod(shape):
                raise ValueError(
                    f"the discriminator must return one score per example (shape "
                    f"{tuple(shape)}), got shape {tuple(out.shape)}"
                )
            out = out.reshape(shape)
        return out

    # -- checkpoints ----------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        # plain tensors, numbers, lists and dicts: weights_only checkpoints store them
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
