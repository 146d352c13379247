"""AutoAmortizedNormal: an encoder guide built by tracing any model with a plate over data.

The guide's parts sit beside it: reading the model's trace (:mod:`.autoguide_trace`), the
encoder's inputs (:mod:`.autoguide_inputs`), the encoder with the posteriors it outputs
(:mod:`.autoguide_encoder`), the guide's prototype built from them
(:mod:`.autoguide_prototype`), its plates (:mod:`.autoguide_plates`) and its posterior
summaries (:mod:`.autoguide_summaries`); this module holds the class, its lifecycle (setup,
the first call) and the guide itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoGuide, AutoNormal

from pyro_gen.plates import enclosing_plate
from pyro_gen.vae.autoguide_encoder import (
    DEFAULT_INIT_SCALE,
    MIN_SCALE,
    local_params,
    local_posterior,
    use_stored_encoder,
)
from pyro_gen.vae.autoguide_init import reported_init_errors
from pyro_gen.vae.autoguide_plates import PlatesMixin
from pyro_gen.vae.autoguide_prototype import PrototypeMixin
from pyro_gen.vae.autoguide_summaries import SummariesMixin

__all__ = ["DEFAULT_INIT_SCALE", "AutoAmortizedNormal"]


class AutoAmortizedNormal(PrototypeMixin, PlatesMixin, SummariesMixin, AutoGuide):
    """Amortized mean-field Normal guide for any model with a plate over data examples,
    built automatically by tracing the model (a Pyro :class:`~pyro.infer.autoguide.AutoGuide`).

    One MLP maps each example's inputs to a loc and a scale for every *local* site (a
    latent under the data plate), in the unconstrained space of the site's support (mapped
    back with ``biject_to``):

    .. math:: q(z_n \\mid x_n) = \\prod_{s \\in \\text{local}} T_{s\\#}\\,
              \\mathcal{N}\\big(\\mu_s(x_n), \\operatorname{diag}\\sigma_s^2(x_n)\\big).

    *Global* sites (latents outside the data plate) get a non-amortized Pyro
    :class:`~pyro.infer.autoguide.AutoNormal` (attribute ``global_guide``).

    **The data plate** is ``plate_name`` or, by default, found in the trace: the plate
    around the most latent sites whose size (or full size, when subsampled) is the first
    dimension of a floating-point tensor argument of the model. The encoder's input is
    every such argument, flattened per example and concatenated (integer arguments, such as
    indices or labels, are left out); pass ``input_fn(*args, **kwargs) -> (rows,
    features)`` to choose otherwise.

    **Subsampling.** With ``pyro.plate(name, N, subsample_size=B)`` or
    ``pyro.plate(name, N, subsample=idx)`` in the model, the guide's local sites sit in a
    plate of full size ``N`` too, so both sides carry Pyro's ``N/B`` scale and global
    latents train correctly on minibatches. If the model is given the minibatch (arguments
    with ``B`` rows), the guide encodes it as is. If it is given the full data (``N``
    rows) and subsamples inside, the guide draws the indices (the model replays them) with
    the sizes the model opens its plate with on that call's data (read once per number of
    examples and non-tensor arguments, by running the model as far as the plate: a held-out
    set of another size, ``batch_size=None`` to score every example), or,
    where the model passes its own ``subsample=idx``, ``create_plates`` must return that
    plate, as for Pyro's autoguides.

    **Discrete sites** marked ``infer={"enumerate": ...}`` are left out (enumerated by
    ``TraceEnum_ELBO``); any other discrete site is refused with an error naming it. To
    guide one by hand, build this guide on ``poutine.block(model, hide=[name])`` and call it
    from your guide function, which samples ``name``. A Pyro
    :class:`~pyro.infer.autoguide.AutoGuideList` takes this guide as a part too; as the list
    opens every plate itself, a hand-written part there enters ``guide_list.plates[...]``
    instead of opening the same plate again (which Pyro would record twice), and batches of
    varying size need the list's ``create_plates=lambda x, ...: pyro.plate(name,
    x.shape[0])`` (the list sizes its plates by the first call otherwise).

    **Masks.** A local site that the model masks (``poutine.mask``, e.g. the padded steps of
    sequences) is masked alike here, since a guide that scored it would add its entropy to
    the ELBO unopposed; the masks of each call are read by one extra run of the model (with
    gradients off), which models without masked local sites do not pay.

    The latent sites are those of the first call: a model whose site set changes with the
    batch (sequences of varying length) needs its own guide or a fixed (padded) length.

    **Initialization.** ``init_loc_fn`` is a Pyro init strategy, as for
    :class:`~pyro.infer.autoguide.AutoNormal` (``init_to_median``, ``init_to_mean``,
    ``init_to_sample``, ``init_to_feasible``, ``init_to_uniform``, ``init_to_generated``,
    ``init_to_value(values=...)``, or any function of a site). Right after setup every
    example's location (unconstrained) is its init value, so :meth:`median` returns the
    values, and the global sites' AutoNormal starts at theirs. The encoder's location head
    is set to the map giving each example its value:

    - a value common to the examples (a strategy on a prior the examples share, a value
      given with one example's shape, which broadcasts over the plate): weights 0 and bias
      the value, exact for every example, seen or not. A strategy's own values count as
      common: where they differ between examples (``init_to_sample``, ``init_to_uniform``,
      ``init_to_median``'s estimate from 15 draws) every example takes the first
      example's, as that difference is noise an encoder would fit with large weights;
    - values the user gives per example (``init_to_value`` with the plate's shape, or a
      function of the site, e.g. ``lambda site: site["fn"].mean`` for a prior that depends
      on the example): the least-squares fit from the last hidden layer over the first
      call's examples, exact for up to that layer's width + 1 of them;
    - a value for every example of a subsampled data plate (its full size along the
      plate's dim, which Pyro's ``AutoNormal`` keeps as the locs of every example): each
      example takes the value at its index in the plate. Where the model is given the full
      data the head is fitted to every example's value (as ``AutoNormal`` starts every
      example there); where it is given a minibatch, to the call's examples, whose indices
      the model's ``subsample=`` gives. A plate that draws its indices itself
      (``subsample_size=``) around a minibatch passed in says nothing of which examples
      the rows are (``AutoNormal`` would give them the values at random indices), so that
      is refused, saying what to pass instead.

    This keeps the location a function of the inputs alone (an offset per example would
    not be amortized, and an offset on top of random weights would not start at the
    value), and the head is just a state of the encoder, which checkpoints and the
    compiled step handle as any other. A value that does not broadcast to the site's shape
    or lies outside its support raises a one-line error naming the site. The scales start
    at ``init_scale`` either way. Without ``init_loc_fn`` (the default) the biases start at
    Pyro's ``init_to_feasible`` point and the encoder's random weights spread the examples
    around it, which trained a VAE on MNIST 15 nats better than every example starting at
    one point (benchmarks/RESULTS.md).

    Parameters are created on the first call (or by :meth:`setup`), outside the recorded
    trace, so the first step already records the parameters in their steady order and a
    ``state_dict`` loads into a guide that has been called once. As with Pyro's autoguides,
    values the param store holds under the guide's names (a store restored with
    ``pyro.get_param_store().load(path)``) are the ones used and trained.

    Args:
        model: a Pyro model callable.
        hidden_dims: hidden sizes of the encoder MLP.
        input_fn: optional map from the model's arguments to a ``(rows, features)`` tensor.
        plate_name: name of the data plate (found in the trace when ``None``).
        init_scale: initial posterior scale (unconstrained space) of the local sites,
            greater than the scales' floor ``MIN_SCALE`` (1e-5).
        init_loc_fn: optional Pyro init strategy giving every latent site its initial
            location (see Initialization above); by default the encoder's random weights
            spread the examples around the feasible point.
        create_plates: optional ``(*args, **kwargs) -> plate or plates``, as for Pyro's
            autoguides (needed when the model subsamples full data with its own indices).
        name: name under which the parameters enter Pyro's param store (default the class
            name, as for Pyro's autoguides).

    References:
        Kingma & Welling, Auto-Encoding Variational Bayes, arXiv:1312.6114.
        Kucukelbir et al., Automatic Differentiation Variational Inference,
        arXiv:1603.00788 (unconstrained Gaussian parameterization).
        Hoffman et al., Stochastic Variational Inference, arXiv:1206.7051 (minibatch
        scaling of local terms).

    Example:
        >>> import pyro.distributions as dist
        >>> def model(x):
        ...     scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))  # global
        ...     with pyro.plate("examples", 100, subsample_size=x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        ...         pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), scale).to_event(1),
        ...                     obs=x)
        >>> guide = AutoAmortizedNormal(model, hidden_dims=(8,))
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}),
        ...                      pyro.infer.Trace_ELBO())
        >>> loss = svi.step(torch.randn(10, 1))  # a minibatch of 10 out of 100
        >>> guide.plate_name, list(guide.local_sites), sorted(guide.median(torch.randn(3, 1)))
        ('examples', ['z'], ['scale', 'z'])

        Starting from the prior means, or from chosen values (one for every example here);
        as with Pyro's autoguides, values the param store holds under the guide's names
        would be used instead, hence the fresh store:

        >>> from pyro.infer.autoguide import init_to_mean, init_to_value
        >>> pyro.clear_param_store()
        >>> guide = AutoAmortizedNormal(model, hidden_dims=(8,), init_loc_fn=init_to_mean)
        >>> start = guide.median(torch.randn(3, 1))  # LogNormal(0, 1)'s mean is e^0.5
        >>> round(start["scale"].item(), 4), start["z"].tolist()
        (1.6487, [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
        >>> pyro.clear_param_store()
        >>> values = {"z": torch.tensor([1.0, -1.0]), "scale": 0.5}
        >>> guide = AutoAmortizedNormal(model, init_loc_fn=init_to_value(values=values))
        >>> guide.median(torch.randn(2, 1))["z"].tolist()
        [[1.0, -1.0], [1.0, -1.0]]
    """

    def __init__(
        self,
        model: Callable[..., Any],
        hidden_dims: Sequence[int] = (256,),
        input_fn: Callable[..., torch.Tensor] | None = None,
        plate_name: str | None = None,
        init_scale: float = DEFAULT_INIT_SCALE,
        *,
        init_loc_fn: Callable[[dict], Any] | None = None,
        create_plates: Callable[..., Any] | None = None,
        name: str | None = None,
    ) -> None:
        if not init_scale > MIN_SCALE:
            # the encoder's scales are softplus(...) + MIN_SCALE, which cannot start lower
            raise ValueError(
                f"init_scale must be greater than the posterior scales' floor {MIN_SCALE:g}, "
                f"got {init_scale:g}"
            )
        if init_loc_fn is not None and not callable(init_loc_fn):
            raise TypeError(
                f"init_loc_fn must be a Pyro init strategy (a function of a site, such as "
                f"pyro.infer.autoguide.init_to_median or init_to_value(values={{...}})), "
                f"got {type(init_loc_fn).__name__}"
            )
        super().__init__(model, create_plates=create_plates)
        if name is not None:
            self._pyro_name = name
        self.hidden_dims = tuple(hidden_dims)
        self.input_fn = input_fn
        self.plate_name = plate_name
        self.init_scale = float(init_scale)
        self.init_loc_fn = init_loc_fn
        self.net: torch.nn.Module | None = None
        self.global_guide: AutoNormal | None = None
        self.local_sites: dict[str, dict[str, Any]] = {}
        self._input_keys: list[int | str] = []
        self._index_inputs = False
        self._signature: inspect.Signature | bool | None = None
        self._masked_sites: list[str] = []

    def setup(self, *args: Any, **kwargs: Any) -> None:
        """Trace the model on example arguments and create every parameter, without
        recording anything (the first call does this otherwise). Call it to load a
        ``state_dict`` before the first step."""
        if self.prototype_trace is None:
            try:
                with reported_init_errors():
                    self._setup_prototype(*args, **kwargs)
            except Exception:
                self.prototype_trace = None  # set up again next call, not half built
                raise
        if self.global_guide is not None and self.global_guide.prototype_trace is None:
            with poutine.block(), reported_init_errors():
                self._create_plates(*args, **kwargs)
                self.global_guide(*args, **kwargs)
        self._use_stored_encoder()

    def _use_stored_encoder(self) -> None:
        """The param store's tensors for the encoder's weights, where it holds them under
        this guide's names (see :func:`use_stored_encoder`)."""
        net = self._modules.get("net")  # not self.net: that is a pyro.module statement
        if net is not None:
            use_stored_encoder(net, self._pyro_name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._refuse_callers_plate()
        # Parameters created inside the first recorded call would be recorded in creation
        # order rather than in the order of later calls (which trips recorders comparing
        # two runs, as the compiled step does), so they are created out of the record.
        if self.prototype_trace is None or (
            self.global_guide is not None and self.global_guide.prototype_trace is None
        ):
            self.setup(*args, **kwargs)
        else:
            self._use_stored_encoder()
        return super().__call__(*args, **kwargs)

    def _refuse_callers_plate(self) -> None:
        """Like Pyro's autoguides, this guide opens the model's plates itself, from the
        model's trace: under a caller's plate at dim -1 (``vae.guide(x[idx])`` inside
        ``pyro.plate("data", N, subsample=idx)``) its plate over the examples met "duplicate
        plate" or "collide at dim=-1" from Pyro, naming neither cause nor remedy."""
        frame = enclosing_plate(-1)
        if frame is not None:
            raise ValueError(
                f"{type(self).__name__} is called under the caller's plate {frame.name!r} "
                "at dim -1, but like Pyro's autoguides it opens the model's plates itself. "
                "Build it from the program that opens that plate and call it outside any "
                "plate: def model(x): with pyro.plate(name, N, subsample_size=B) as idx: "
                "vae.model(x[idx]); guide = AutoAmortizedNormal(model)"
            )

    # -- guide ---------------------------------------------------------------------------
    def _local_params(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return local_params(self.net, self.local_sites, x)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Sample every latent site the guide covers; returns ``{name: value}``."""
        if self.prototype_trace is None:  # called as forward(), not through __call__
            self.setup(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result: dict[str, torch.Tensor] = {}
        if self.global_guide is not None:
            result.update(self.global_guide(*args, **kwargs))
        rows = self._rows(args, kwargs)
        data_plate = self._data_plate(plates, rows.shape[0], rows.device, args, kwargs)
        masks = self._site_masks(data_plate, args, kwargs) if self._masked_sites else {}
        with data_plate as indices:
            x = rows[indices] if self._index_inputs else rows
            params = self._local_params(x)
            for name, s in self.local_sites.items():
                loc, scale = params[name]
                with ExitStack() as stack:
                    for f in s["frames"]:
                        stack.enter_context(plates[f.name])
                    if name in masks:
                        stack.enter_context(poutine.mask(mask=masks[name]))
                    result[name] = pyro.sample(name, local_posterior(loc, scale, s))
        return result
