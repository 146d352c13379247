"""VampPrior: the aggregate posterior at learned pseudo-inputs, used as a prior."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from pyro.infer.autoguide import AutoGuide
from torch import nn

from pyro_gen.distributions.mixture import GaussianMixture
from pyro_gen.distributions.prior_module import PriorModule
from pyro_gen.transforms._base import as_event_shape

Encode = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class VampPrior(PriorModule):
    """Variational mixture of posteriors prior,

    .. math:: p(z) = \\frac{1}{K} \\sum_{k=1}^K q(z \\mid u_k),

    where :math:`u_1, \\dots, u_K` are learnable pseudo-inputs in data space and
    :math:`q(z \\mid x) = \\mathcal{N}(\\mu(x), \\operatorname{diag}\\sigma^2(x))` is the
    (amortized Normal) guide. The pseudo-inputs are kept in :math:`[0, 1]` through a
    sigmoid. The encoder is taken from the guide by :meth:`bind` (the VAE does this); it is
    held by reference, not registered as a submodule, so its weights enter Pyro's param
    store once, through the guide.

    **With a flow posterior** (:class:`~pyro_gen.vae.IAFPosterior`) the components are the
    posterior's Normal stage, before its flow steps:
    :math:`p(z) = \\frac{1}{K} \\sum_k \\mathcal{N}(z; \\mu(u_k), \\operatorname{diag}
    \\sigma^2(u_k))`, not the average of the flowed posteriors :math:`q(z \\mid u_k)` that
    the paper's definition would give. Why: scoring a latent under a flowed component means
    inverting that component's IAF, whose autoregressive inverse takes ``z_dim`` sequential
    network passes per flow step, for every (latent, pseudo-input) pair; at a batch of 128,
    500 pseudo-inputs and ``z_dim`` 16 one gradient step of the prior took about 150 times
    as long (19 s against 0.13 s on 2 CPU threads). The prior stays an exact, normalized
    Gaussian mixture with learned pseudo-inputs, so the ELBO is still a bound on
    :math:`\\log p(x)`; it is only no longer the flowed aggregate posterior, the optimum the
    VampPrior approximates.

    Args:
        event_shape: shape of one example (and of each pseudo-input); an int is one
            dimension.
        num_components: number of pseudo-inputs :math:`K` (default 500, or the rows of
            ``init``).
        encode: optional ``x -> (loc, scale)``; else supplied by :meth:`bind`.
        init: optional initial pseudo-inputs in :math:`(0, 1)`, shape ``(K, *event_shape)``
            (e.g. random training images).

    References:
        Tomczak & Welling, VAE with a VampPrior, arXiv:1705.07120.

    Example:
        >>> enc = lambda u: (u.flatten(1)[:, :2], torch.ones(u.shape[0], 2))
        >>> prior = VampPrior((4,), num_components=3, encode=enc)
        >>> prior().log_prob(torch.zeros(5, 2)).shape
        torch.Size([5])

        Bound to an IAF posterior, the components are its encoder's Normals:

        >>> from pyro_gen.vae import IAFPosterior, MLPEncoder
        >>> q = IAFPosterior(MLPEncoder((4,), 2, (8,)), num_flows=2)
        >>> prior = VampPrior((4,), num_components=3)
        >>> prior.bind(q)
        >>> torch.equal(prior().locs, q.encode(prior.pseudo_inputs())[0])
        True
    """

    def __init__(
        self,
        event_shape: int | Sequence[int],
        num_components: int | None = None,
        encode: Encode | None = None,
        init: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        # an int is one dimension, as for Flow (tuple(784) failed: int is not iterable)
        self.event_shape = as_event_shape(event_shape)
        if init is None:
            num_components = 500 if num_components is None else num_components
            if num_components < 1:
                raise ValueError(f"num_components must be at least 1, got {num_components}")
            raw = 0.1 * torch.randn(num_components, *self.event_shape)
        else:
            _check_init(init, self.event_shape, num_components)
            # the default dtype, as the randn above and every module's parameters: float32
            # pseudo-inputs in a float64 program trained in float32
            p = init.to(torch.get_default_dtype()).clamp(0.01, 0.99)
            raw = (p / (1 - p)).log()
        self.pseudo_inputs_raw = nn.Parameter(raw)
        self._encode: list[Encode | None] = [None]  # a list: the encoder is no submodule
        if encode is not None:
            self._set_encoder(encode, "encode")

    @property
    def num_components(self) -> int:
        return self.pseudo_inputs_raw.shape[0]

    def bind(self, guide: nn.Module) -> None:
        """Use ``guide.encode`` (an amortized Normal posterior family, ``encode(x) -> (loc,
        scale)``) for the mixture components (for a flow posterior, its Normal stage: see
        the class docstring).

        The encoder is tried here on two pseudo-inputs (without gradients, a module guide in
        eval mode), so a guide whose ``encode`` takes other arguments, refuses inputs of the
        prior's ``event_shape`` or returns something other than ``(loc, scale)`` of shape
        ``(rows, z_dim)`` is refused now, with what to change, rather than at the first
        step. A dtype or device mismatch is left to the first call, since the prior may
        still be moved (``prior.to(...)``).

        Raises:
            TypeError: the guide has no usable ``encode`` (a Pyro autoguide's ``encode`` takes
                the model's arguments and returns a dict of sites), or ``encode`` cannot
                take one tensor, or returns the wrong structure or shapes.
        """
        encode = getattr(guide, "encode", None)
        name = type(guide).__name__
        if not callable(encode):
            raise TypeError(
                f"VampPrior needs an amortized Normal guide with encode(x) -> (loc, scale); "
                f"{name} has none: pass a posterior family such as "
                "NormalPosterior(MLPEncoder(...)), or VampPrior(..., encode=fn)"
            )
        if isinstance(guide, AutoGuide):
            raise TypeError(
                f"VampPrior cannot bind {name}: an autoguide's encode takes the model's "
                "arguments and returns a dict of sites, not (loc, scale) for a batch of "
                "pseudo-inputs; bind a posterior family such as NormalPosterior(MLPEncoder(...)) "
                "(VAE(..., posterior=...)), or pass VampPrior(..., encode=fn) with fn(x) -> "
                "(loc, scale)"
            )
        self._set_encoder(encode, f"{name}.encode", guide)

    def _set_encoder(self, encode: Encode, who: str, owner: object = None) -> None:
        """Try ``encode`` on two pseudo-inputs and keep it (see :meth:`bind`)."""
        _check_takes_one_tensor(encode, who)
        if owner is None:  # encode=module.encode: the module's mode is what matters
            owner = getattr(encode, "__self__", encode)
        with torch.no_grad(), _eval_mode(owner):
            u = self.pseudo_inputs()[:2]
            try:
                out = encode(u)
            except RuntimeError as e:
                if not _is_placement_error(e):
                    raise TypeError(
                        f"VampPrior: {who} failed on pseudo-inputs of shape {tuple(u.shape)} "
                        f"(rows of the prior's event_shape {self.event_shape}): {e}; give "
                        "VampPrior the event_shape of the data the encoder takes"
                    ) from e
                # else: the prior may still be moved; the first call says what to do
            else:
                _check_encoded(out, u.shape[0], who)
        self._encode[0] = encode

    def pseudo_inputs(self) -> torch.Tensor:
        return torch.sigmoid(self.pseudo_inputs_raw)

    def forward(self, context: torch.Tensor | None = None, **kwargs) -> GaussianMixture:
        if self._encode[0] is None:
            raise RuntimeError("VampPrior has no encoder: pass encode= or call bind(guide)")
        if context is not None:
            raise NotImplementedError("VampPrior does not support a conditional VAE")
        u = self.pseudo_inputs()
        try:
            out = self._encode[0](u)
        except RuntimeError as e:
            # a float64 encoder fed the float32 pseudo-inputs failed inside its first layer
            if "dtype" not in str(e) and "scalar type" not in str(e):
                raise
            raise TypeError(
                f"VampPrior's pseudo-inputs are {u.dtype} and its encoder refused them "
                f"({e}); give both one dtype: prior.to(<the encoder's dtype>)"
            ) from e
        _check_encoded(out, u.shape[0], "VampPrior's encoder")
        loc, scale = out
        logits = torch.full(loc.shape[:1], -math.log(loc.shape[0]), device=loc.device)
        return GaussianMixture(logits.to(loc.dtype), loc, scale)


def _check_init(
    init: torch.Tensor, event_shape: tuple[int, ...], num_components: int | None
) -> None:
    """One clear error for initial pseudo-inputs the prior would otherwise clamp or reshape
    into something else without a word (0..255 images all became 0.99)."""
    expected = ("K", *event_shape) if num_components is None else (num_components, *event_shape)
    if init.dim() != len(event_shape) + 1 or tuple(init.shape[1:]) != event_shape:
        raise ValueError(
            f"init must have shape (K, *event_shape) = {expected}, got {tuple(init.shape)}; "
            f"reshape the examples to the prior's event shape"
        )
    if num_components is not None and init.shape[0] != num_components:
        raise ValueError(
            f"init has {init.shape[0]} pseudo-inputs but num_components={num_components}; "
            f"pass as many rows as components (or leave num_components out)"
        )
    if init.shape[0] < 1:
        raise ValueError("init needs at least one pseudo-input")
    values = init.double()
    if not bool(torch.isfinite(values).all()) or values.min() < 0 or values.max() > 1:
        raise ValueError(
            f"init must hold pseudo-inputs in [0, 1] (they pass through a sigmoid), got "
            f"values in [{values.min().item():.4g}, {values.max().item():.4g}]; scale the "
            f"data first (e.g. images / 255)"
        )


def _check_takes_one_tensor(encode: Callable, name: str) -> None:
    """One clear error for an ``encode`` that needs more than the pseudo-inputs (an
    ``encode(x, y)`` of a conditional guide failed inside the first step)."""
    try:
        signature = inspect.signature(encode)
    except (TypeError, ValueError):  # a builtin without a signature: the trial call decides
        return
    try:
        signature.bind(torch.empty(0))
    except TypeError as e:
        raise TypeError(
            f"VampPrior calls {name}(x) with the pseudo-inputs alone, but its signature is "
            f"{signature} ({e}); give the extra arguments defaults, or "
            "pass VampPrior(..., encode=lambda u: ...) taking one tensor"
        ) from None


def _check_encoded(out: object, rows: int, who: str) -> None:
    """``out`` must be ``(loc, scale)``: loc of shape ``(rows, z_dim)`` and a scale that
    broadcasts to it."""
    ok = (
        isinstance(out, (tuple, list))
        and len(out) == 2
        and all(isinstance(t, torch.Tensor) for t in out)
        and out[0].dim() == 2
        and out[0].shape[0] == rows
    )
    if ok:
        loc, scale = out
        try:
            ok = torch.broadcast_shapes(scale.shape, loc.shape) == loc.shape and scale.dim() == 2
        except RuntimeError:
            ok = False
    if not ok:
        raise TypeError(
            f"{who} must return (loc, scale), each of shape (K, z_dim) for K pseudo-inputs "
            f"(here K = {rows}); it returned {_describe(out)}: return the Normal's mean and "
            "standard deviation per input row (a flat z_dim latent)"
        )


def _is_placement_error(e: RuntimeError) -> bool:
    """A dtype or device mismatch between the pseudo-inputs and the encoder's weights."""
    text = str(e)
    return any(k in text for k in ("dtype", "scalar type", "device", "Expected all tensors"))


@contextmanager
def _eval_mode(guide: object) -> Iterator[None]:
    """Eval mode for the trial call (no dropout, no batch-norm statistics updated), then
    each submodule's own mode back."""
    if not isinstance(guide, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in guide.modules()]
    guide.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _describe(out: object) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        return "(" + ", ".join(_describe(t) for t in out) + ")"
    return type(out).__name__
