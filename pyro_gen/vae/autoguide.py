"""AutoAmortizedNormal: an encoder guide built by tracing any model with a plate over data.

The guide's parts sit beside it: reading the model's trace (:mod:`.autoguide_trace`), the
encoder's inputs (:mod:`.autoguide_inputs`) and the encoder with the posteriors it outputs
(:mod:`.autoguide_encoder`); this module builds the guide from them and opens its plates.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.utils._pytree as pytree
from pyro import poutine
from pyro.infer.autoguide import AutoGuide, AutoNormal
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from pyro_gen.vae.autoguide_encoder import (
    DEFAULT_INIT_SCALE,
    MIN_SCALE,
    local_params,
    local_posterior,
    local_site,
    make_encoder,
    start_locs_at,
    use_stored_encoder,
)
from pyro_gen.vae.autoguide_init import (
    CheckedInit,
    full_plate_locs,
    per_example_locs,
    reported_init_errors,
)
from pyro_gen.vae.autoguide_inputs import (
    bind_arguments,
    choose_inputs,
    encoder_rows,
    model_signature,
    sized_arguments,
)
from pyro_gen.vae.autoguide_trace import (
    check_latent_sites,
    find_data_plate,
    plate_sizes,
    random_plates_of,
    trace_latents,
)

__all__ = ["DEFAULT_INIT_SCALE", "AutoAmortizedNormal"]


class AutoAmortizedNormal(AutoGuide):
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

    # -- the model's arguments and its trace (autoguide_inputs, autoguide_trace) ----------
    def _arguments(self, args: tuple, kwargs: dict) -> dict[int | str, Any]:
        """The model's arguments by parameter name (by position if it takes ``*args``)."""
        if self._signature is None and self.model is not None:
            # kept, because a pickled Pyro autoguide drops its model
            self._signature = model_signature(self.model)
        return bind_arguments(self._signature, args, kwargs)

    def _rows(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """Per-example inputs, ``(rows, features)``: the minibatch, or the full data."""
        if self.input_fn is not None:
            return self.input_fn(*args, **kwargs)
        return encoder_rows(self._arguments(args, kwargs), self._input_keys)

    def _find_data_plate(self, trace: Any, args: tuple, kwargs: dict) -> CondIndepStackFrame:
        rows = self.input_fn(*args, **kwargs).shape[0] if self.input_fn is not None else None

        def has_inputs(f: CondIndepStackFrame) -> bool:
            sizes = {f.size, f.full_size or f.size}
            if rows is not None:  # the encoder's rows are the examples: a plate of their number
                return rows in sizes
            return bool(sized_arguments(self._arguments(args, kwargs), sizes))

        return find_data_plate(trace, self.plate_name, has_inputs)

    def _choose_inputs(
        self, frame: CondIndepStackFrame, draws_indices: bool, args: tuple, kwargs: dict
    ) -> None:
        if self.input_fn is None:
            arguments = self._arguments(args, kwargs)
            self._input_keys, self._index_inputs = choose_inputs(frame, arguments)
        else:
            full = frame.full_size or frame.size
            rows = self.input_fn(*args, **kwargs).shape[0]
            self._index_inputs = full != frame.size and rows == full
        if self._index_inputs and not draws_indices and not self._user_plates():
            raise ValueError(
                f"plate {frame.name!r} subsamples the full data with indices the model "
                f"chooses itself (subsample=...), which the guide cannot see: pass "
                f"create_plates=lambda *args, **kwargs: pyro.plate({frame.name!r}, "
                f"{frame.full_size or frame.size}, subsample=<the same indices>), or pass "
                f"the minibatch to the model"
            )

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        init = None if self.init_loc_fn is None else CheckedInit(self.init_loc_fn)
        if init is not None and self.master is not None:
            self._check_plates_seen(args, kwargs)
        trace, random_plates, enumerated, subsamples = trace_latents(self.model, args, kwargs, init)
        check_latent_sites(trace)
        self.prototype_trace = trace
        if self.master is not None:
            self.master()._check_prototype(trace)
        self._prototype_frames = {
            f.name: f for _, site in trace.iter_stochastic_nodes() for f in site["cond_indep_stack"]
        }
        frame = self._find_data_plate(trace, args, kwargs)
        self.plate_name, self._data_frame = frame.name, frame
        subsampled = frame.full_size not in (None, frame.size)
        if subsampled and frame.name not in random_plates and self.master is not None:
            # a part of an AutoGuideList, whose model may hide the plate's own indices
            # (expose=[...]): the list draws them for the model to replay, if it draws any
            random_plates |= random_plates_of(self.master().model, args, kwargs) & {frame.name}
        self._choose_inputs(frame, frame.name in random_plates, args, kwargs)

        local, global_names = {}, []
        for name, site in trace.iter_stochastic_nodes():
            if all(f.name != frame.name for f in site["cond_indep_stack"]):
                global_names.append(name)
                continue
            local[name] = local_site(site, frame)
        self.local_sites = local
        self._masked_sites = [n for n in local if trace.nodes[n]["mask"] is not None]

        total = sum(s["numel"] for s in local.values())
        rows = self._rows(args, kwargs)
        # the data plate's sizes for calls like this one (see _plate_sizes)
        self._subsample_sizes = {
            _call_key(rows.shape[0], args, kwargs): (frame.full_size or frame.size, frame.size)
        }
        self.net = make_encoder(rows, self.hidden_dims, total, self.init_scale)
        if init is not None:
            # Pyro's meaning (each site's loc starts at the init value) for a loc that is a
            # function of the example: the loc head is set to the map giving each example
            # its value (weights 0 and bias the value where it is common, the least-squares
            # fit where it differs), rather than an offset beside the encoder, so the guide
            # stays a plain encoder and checkpoints and the compiled step see nothing new.
            full = frame.full_size or frame.size
            if frame.name in random_plates and not self._index_inputs:
                _refuse_random_indices(init.full_values, frame.name, full)
            every = full_plate_locs(trace, local, init.full_values, frame.name, full)
            if self._index_inputs and every is not None:  # the full data, a value for each
                start_locs_at(self.net, rows, every)
            else:
                if self._index_inputs:  # the full data: the examples the trace's plate took
                    rows = rows[subsamples[frame.name]]
                start_locs_at(self.net, rows, per_example_locs(trace, local, frame.size))
        if global_names:
            hidden = list(local) + enumerated
            # a strategy of its own: its trace draws its own indices, which this one's
            # reading of the prototype's plates would not know
            options = {} if init is None else {"init_loc_fn": CheckedInit(self.init_loc_fn)}
            self.global_guide = AutoNormal(poutine.block(self.model, hide=hidden), **options)

    def _check_plates_seen(self, args: tuple, kwargs: dict) -> None:
        """Init values are placed by the examples a plate drew (see Initialization), which
        a part's model blocked with ``expose=`` hides (the plate's indices are a site too);
        without them a value per example would be refused as the wrong shape, or a common
        one fail, so this says what to change."""
        hidden = random_plates_of(self.master().model, args, kwargs) - random_plates_of(
            self.model, args, kwargs
        )
        if hidden:
            raise ValueError(
                f"init_loc_fn: this AutoGuideList part's model hides the indices plate(s) "
                f"{sorted(hidden)} draw (poutine.block(model, expose=[...]) blocks them as "
                "sites too), so the init values cannot be placed on their examples: block "
                "the other parts' sites with poutine.block(model, hide=[...]) instead"
            )

    def _check_prototype(self, part_trace: Any) -> None:
        # the global AutoNormal reports its prototype to its master, as in an AutoGuideList
        # the distributions' shapes, not the values': a global site under a subsampled
        # plate may hold an init value of the plate's full size there (see CheckedInit)
        for name, site in part_trace.iter_stochastic_nodes():
            mine = self.prototype_trace.nodes[name]
            if _shape(site) != _shape(mine):
                raise ValueError(f"site {name!r} changed shape while the guide was built")

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

    # -- plates --------------------------------------------------------------------------
    def _create_plates(self, *args: Any, **kwargs: Any) -> dict[str, pyro.plate]:
        if self.master is not None:
            self.plates = self.master().plates
            return self.plates
        plates: dict[str, pyro.plate] = {}
        if self.create_plates is not None:
            made = self.create_plates(*args, **kwargs)
            made = [made] if isinstance(made, pyro.plate) else list(made)
            if not all(isinstance(p, pyro.plate) for p in made):
                raise TypeError("create_plates() must return a pyro.plate or plates")
            plates = {p.name: p for p in made}
        for name, f in self._prototype_frames.items():
            # the data plate is made per call, sized by the batch at hand
            if name not in plates and name != self.plate_name:
                plates[name] = pyro.plate(
                    name, f.full_size or f.size, subsample_size=f.size, dim=f.dim
                )
        self.plates = plates
        return plates

    def _user_plates(self) -> bool:
        """Whether the user makes the plates (this guide's or its AutoGuideList's
        ``create_plates``)."""
        return self.create_plates is not None or (
            self.master is not None and self.master().create_plates is not None
        )

    def _data_plate(
        self, plates: dict[str, pyro.plate], rows: int, device, args: tuple, kwargs: dict
    ) -> pyro.plate:
        f = self._data_frame
        user_plate = self._user_plates()
        if f.name in plates and (user_plate or (self._index_inputs and self.master is not None)):
            return plates[f.name]  # indices chosen by the user, or drawn once by the master
        full = f.full_size or f.size
        if self._index_inputs:  # the model replays the indices drawn here
            full, size = self._plate_sizes(rows, args, kwargs)
            return pyro.plate(f.name, full, subsample_size=size, dim=f.dim, device=device)
        # The rows at hand are the examples and only the scale N/B matters: the plate's
        # index site is kept out of the trace, so the model keeps its own indices (replayed
        # ones would override a model's subsample=idx) and a hand-written guide part may
        # open its own plate of this name next to this guide.
        indices = torch.arange(rows, device=device)
        with poutine.block(hide_fn=site_is_subsample):
            return pyro.plate(
                f.name, rows if full == f.size else full, subsample=indices, dim=f.dim
            )

    def _plate_sizes(self, rows: int, args: tuple, kwargs: dict) -> tuple[int, int]:
        """The full and subsample sizes of the data plate that the model subsamples itself,
        for this call: the trace's, or, for other data or other options than the trace's
        (a held-out set of another size, another ``batch_size=``), the model's own, read
        once per such call structure by running it as far as the plate."""
        known = self.__dict__.setdefault("_subsample_sizes", {})
        key = _call_key(rows, args, kwargs)
        if key not in known:
            f = self._data_frame
            known[key] = plate_sizes(self.model, args, kwargs, f.name) or (rows, f.size)
        return known[key]

    @torch.no_grad()
    def _site_masks(self, data_plate: pyro.plate, args: tuple, kwargs: dict) -> dict[str, Any]:
        """The model's masks of the local sites for this call (e.g. padded steps of
        sequences): a guide that scored a site the model masks out would add that site's
        entropy to the ELBO unopposed. Read by one blocked run of the model."""
        if self.model is None:
            raise RuntimeError(
                "this AutoAmortizedNormal has lost its model (Pyro autoguides drop it when "
                "pickled) and needs it to read the model's masks: set guide._model = (model,)"
            )
        model = self.model
        if self._index_inputs:  # the model's plate must pick the rows this guide encodes
            model = poutine.condition(model, data={self.plate_name: data_plate.indices})
        trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
        return {name: trace.nodes[name]["mask"] for name in self._masked_sites}

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

    @torch.no_grad()
    def encode(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Posterior median of each local site (the loc mapped to its support), for every
        example in the model's arguments."""
        self.setup(*args, **kwargs)
        params = self._local_params(self._rows(args, kwargs))
        return {
            name: biject_to(self.local_sites[name]["support"])(loc)
            for name, (loc, _) in params.items()
        }

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Posterior median of every latent site: globals, and locals per example."""
        self.setup(*args, **kwargs)
        out = {} if self.global_guide is None else self.global_guide.median(*args, **kwargs)
        out.update(self.encode(*args, **kwargs))
        return out

    @torch.no_grad()
    def quantiles(
        self, quantiles: Sequence[float] | torch.Tensor, *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """Posterior quantiles of every latent site (globals, and locals per example), the
        quantiles first: ``{name: tensor of shape (len(quantiles),) + site shape}``.

        As Pyro's :class:`~pyro.infer.autoguide.AutoNormal` gives them (and so an
        :class:`~pyro.infer.autoguide.AutoGuideList` holding this guide can): the quantiles
        of each unconstrained coordinate's Normal mapped onto the site's support. Those are
        the marginal quantiles where the support is mapped coordinate by coordinate (real,
        positive, an interval); for a simplex or a Cholesky factor they are a summary only.
        The quantile 0.5 is :meth:`median`.

        Example:
            >>> import pyro.distributions as dist
            >>> def model(x):
            ...     with pyro.plate("data", x.shape[0]):
            ...         pyro.sample("s", dist.LogNormal(0.0, 1.0))
            >>> guide = AutoAmortizedNormal(model, hidden_dims=(4,))
            >>> q = guide.quantiles([0.1, 0.5, 0.9], torch.randn(3, 2))
            >>> q["s"].shape, bool((q["s"][0] < q["s"][1]).all() and (q["s"][1] < q["s"][2]).all())
            (torch.Size([3, 3]), True)
        """
        self.setup(*args, **kwargs)
        out = (
            {}
            if self.global_guide is None
            else self.global_guide.quantiles(quantiles, *args, **kwargs)
        )
        for name, (loc, scale) in self._local_params(self._rows(args, kwargs)).items():
            q = torch.as_tensor(quantiles, dtype=loc.dtype, device=loc.device)
            values = dist.Normal(loc, scale).icdf(q.reshape((-1,) + (1,) * loc.dim()))
            out[name] = biject_to(self.local_sites[name]["support"])(values)
        return out


def _shape(site: dict) -> torch.Size:
    return site["fn"].batch_shape + site["fn"].event_shape


def _refuse_random_indices(
    full_values: dict[str, tuple[torch.Tensor, tuple[str, ...]]], plate: str, full: int
) -> None:
    """Refuses values for every example of a plate that draws random indices around the
    minibatch the model is given: the indices do not say which examples the rows are."""
    names = sorted(n for n, (_, plates) in full_values.items() if plate in plates)
    if names:
        raise ValueError(
            f"init_loc_fn gave sites {names} one value per example of the data set "
            f"({full} along plate {plate!r}), but that plate draws its subsample indices at "
            f"random (subsample_size=) while the model is given the minibatch, so nothing "
            f"says which of those values are the minibatch's examples: open the plate with "
            f"subsample=<the minibatch's indices in the data set>, give the values of this "
            f"call's examples, or give the model the full data to subsample"
        )


def _call_key(rows: int, args: tuple, kwargs: dict) -> tuple:
    """What decides a model's own subsampling of its data: the number of examples and the
    arguments that are not tensors (``batch_size=``, flags)."""
    return (rows, *(v for v in pytree.tree_leaves((args, kwargs)) if not torch.is_tensor(v)))
