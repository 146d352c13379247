"""AutoAmortizedNormal: an encoder guide built by tracing any model with a plate over data."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoGuide, AutoNormal
from pyro.nn.module import _make_name
from pyro.params.param_store import param_with_module_name
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to
from torch.distributions.transforms import ComposeTransform, IndependentTransform, Transform
from torch.nn import functional as F

from pyro_gen.vae._utils import mlp

#: Default initial posterior scale (unconstrained space) of the local sites: on Pyro's MNIST
#: VAE it beat 0.1, 0.3 and 2 (by 0.5-1.6 nats) and the example's hand-written guide
#: (benchmarks/autoguide_init_scale.py, benchmarks/RESULTS.md).
DEFAULT_INIT_SCALE = 1.0
_MIN_SCALE = 1e-5


def _is_identity(t: Transform) -> bool:
    if isinstance(t, IndependentTransform):
        return _is_identity(t.base_transform)
    return isinstance(t, ComposeTransform) and not t.parts


def _discrete_site_error(name: str, site: dict) -> ValueError:
    return ValueError(
        f"AutoAmortizedNormal cannot guide the discrete site {name!r} "
        f"({type(site['fn']).__name__}, support {site['fn'].support}). Either enumerate it: "
        f"sample it with infer={{'enumerate': 'parallel'}} (or pyro.infer.config_enumerate) "
        f"and train with TraceEnum_ELBO, and this guide leaves it out; or guide it yourself: "
        f"build this guide on poutine.block(model, hide=[{name!r}]) and call it from a guide "
        f"function that also samples {name!r}, or append both to a "
        f"pyro.infer.autoguide.AutoGuideList (a hand-written part enters the list's plates, "
        f"guide_list.plates[...], rather than opening its own)."
    )


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
    rows) and subsamples inside, the guide draws the indices (the model replays them), or,
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
        init_scale: initial posterior scale (unconstrained space) of the local sites.
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
    """

    def __init__(
        self,
        model: Callable[..., Any],
        hidden_dims: Sequence[int] = (256,),
        input_fn: Callable[..., torch.Tensor] | None = None,
        plate_name: str | None = None,
        init_scale: float = DEFAULT_INIT_SCALE,
        *,
        create_plates: Callable[..., Any] | None = None,
        name: str | None = None,
    ) -> None:
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        super().__init__(model, create_plates=create_plates)
        if name is not None:
            self._pyro_name = name
        self.hidden_dims = tuple(hidden_dims)
        self.input_fn = input_fn
        self.plate_name = plate_name
        self.init_scale = float(init_scale)
        self.net: torch.nn.Module | None = None
        self.global_guide: AutoNormal | None = None
        self.local_sites: dict[str, dict[str, Any]] = {}
        self._input_keys: list[int | str] = []
        self._index_inputs = False
        self._signature: inspect.Signature | bool | None = None
        self._masked_sites: list[str] = []

    # -- the model's arguments ---------------------------------------------------------
    def _arguments(self, args: tuple, kwargs: dict) -> dict[int | str, Any]:
        """The model's arguments by parameter name (by position if it takes ``*args``)."""
        if self._signature is None and self.model is not None:
            # kept, because a pickled Pyro autoguide drops its model
            try:
                self._signature = inspect.signature(self.model)
            except (TypeError, ValueError):
                self._signature = False
        try:
            bound = self._signature.bind(*args, **kwargs)
        except (AttributeError, TypeError, ValueError):
            return {**dict(enumerate(args)), **kwargs}
        out: dict[int | str, Any] = {}
        for key, value in bound.arguments.items():
            kind = bound.signature.parameters[key].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                out.update({f"{key}[{i}]": v for i, v in enumerate(value)})
            elif kind is inspect.Parameter.VAR_KEYWORD:
                out.update(value)
            else:
                out[key] = value
        return out

    def _rows(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """Per-example inputs, ``(rows, features)``: the minibatch, or the full data."""
        if self.input_fn is not None:
            return self.input_fn(*args, **kwargs)
        arguments = self._arguments(args, kwargs)
        missing = [k for k in self._input_keys if arguments.get(k) is None]
        if missing:
            raise ValueError(
                f"AutoAmortizedNormal was built to encode the model arguments "
                f"{self._input_keys} but {missing} were not given; pass "
                f"input_fn=lambda *args, **kwargs: (rows, features) tensor to choose"
            )
        parts = [arguments[k] for k in self._input_keys]
        flat = [p.reshape(p.shape[0], -1).to(parts[0].dtype) for p in parts]
        return flat[0] if len(flat) == 1 else torch.cat(flat, -1)  # no copy for one input

    def _sized_arguments(self, sizes: Iterable[int], args: tuple, kwargs: dict) -> list:
        """Floating-point tensor arguments with one row per example (indices and integer
        labels are left to ``input_fn``)."""
        sizes = set(sizes)
        return [
            k
            for k, v in self._arguments(args, kwargs).items()
            if torch.is_tensor(v) and v.is_floating_point() and v.dim() and v.shape[0] in sizes
        ]

    # -- set-up --------------------------------------------------------------------------
    def _trace_model(self, args: tuple, kwargs: dict) -> tuple[Any, set[str], list[str]]:
        """Trace the latent sites; note the plates that draw random indices (which a guide
        can draw for the model to replay) and the enumerated sites, left out here."""
        random_plates: set[str] = set()
        enumerated: list[str] = []

        def hide(msg: dict) -> bool:
            if site_is_subsample(msg):
                if msg["fn"].subsample_size is not None:
                    random_plates.add(msg["name"])
                return True
            if msg["type"] != "sample" or msg["is_observed"]:
                return True
            if msg["infer"].get("enumerate"):
                enumerated.append(msg["name"])
                return True
            return False

        model = poutine.block(self.model, hide_fn=hide)
        trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
        for _, site in trace.iter_stochastic_nodes():
            # A plate without a size (pyro.plate("data"), as in Pyro's ss_vae example) takes
            # it from the sites' batch shape: record that size, which the plates made here
            # (and the search for the data plate) need.
            batch = site["fn"].batch_shape
            site["cond_indep_stack"] = tuple(
                f._replace(size=batch[f.dim], full_size=batch[f.dim])
                if f.size == -1 and f.dim is not None and -f.dim <= len(batch)
                else f
                for f in site["cond_indep_stack"]
            )
        return trace, random_plates, enumerated

    def _find_data_plate(self, trace: Any, args: tuple, kwargs: dict) -> CondIndepStackFrame:
        frames: dict[str, CondIndepStackFrame] = {}
        counts: dict[str, int] = {}
        for _, site in trace.iter_stochastic_nodes():
            for f in site["cond_indep_stack"]:
                frames[f.name] = f
                counts[f.name] = counts.get(f.name, 0) + 1
        described = ", ".join(
            f"{n!r} (size {f.full_size or f.size}"
            + (f", subsample {f.size})" if f.full_size not in (None, f.size) else ")")
            for n, f in frames.items()
        )
        if self.plate_name is not None:
            if self.plate_name not in frames:
                raise ValueError(
                    f"no such plate {self.plate_name!r} around a latent site of the model; "
                    f"its plates are: {described or 'none'}"
                )
            return frames[self.plate_name]
        candidates = [
            f
            for f in frames.values()
            if self.input_fn is not None
            or self._sized_arguments({f.size, f.full_size or f.size}, args, kwargs)
        ]
        if not candidates:
            raise ValueError(
                "AutoAmortizedNormal found no plate over data examples: "
                + (
                    f"no floating-point tensor argument of the model has a plate's size as "
                    f"its first dimension (plates: {described}); pass plate_name= and input_fn="
                    f"lambda *args, **kwargs: (batch, features) tensor"
                    if frames
                    else "the model has no latent site under a pyro.plate (no such plate); "
                    "use pyro.infer.autoguide.AutoNormal for a model without local latents"
                )
            )
        # the plate around most latent sites; on a tie the outermost (rightmost dim)
        return max(candidates, key=lambda f: (counts[f.name], f.dim))

    def _choose_inputs(
        self, frame: CondIndepStackFrame, draws_indices: bool, args: tuple, kwargs: dict
    ) -> None:
        full = frame.full_size or frame.size
        if self.input_fn is None:
            keys = self._sized_arguments({frame.size}, args, kwargs)
            self._index_inputs = False
            if not keys and full != frame.size:
                keys = self._sized_arguments({full}, args, kwargs)
                self._index_inputs = True
            if not keys:
                raise ValueError(
                    f"AutoAmortizedNormal found no floating-point tensor argument of the model "
                    f"with first dimension {frame.size} (the size of plate {frame.name!r}) to "
                    f"encode; "
                    f"pass input_fn=lambda *args, **kwargs: tensor of shape (batch, features)"
                )
            self._input_keys = keys
        else:
            rows = self.input_fn(*args, **kwargs).shape[0]
            self._index_inputs = full != frame.size and rows == full
        user_plate = self.create_plates is not None or (
            self.master is not None and self.master().create_plates is not None
        )
        if self._index_inputs and not draws_indices and not user_plate:
            raise ValueError(
                f"plate {frame.name!r} subsamples the full data with indices the model "
                f"chooses itself (subsample=...), which the guide cannot see: pass "
                f"create_plates=lambda *args, **kwargs: pyro.plate({frame.name!r}, "
                f"{full}, subsample=<the same indices>), or pass the minibatch to the model"
            )

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        trace, random_plates, enumerated = self._trace_model(args, kwargs)
        for name, site in trace.iter_stochastic_nodes():
            if any(not f.vectorized for f in site["cond_indep_stack"]):
                raise NotImplementedError(
                    f"site {name!r} is under a sequential plate; use a vectorized pyro.plate"
                )
            if site["fn"].support.is_discrete:
                raise _discrete_site_error(name, site)
        self.prototype_trace = trace
        if self.master is not None:
            self.master()._check_prototype(trace)
        self._prototype_frames = {
            f.name: f for _, site in trace.iter_stochastic_nodes() for f in site["cond_indep_stack"]
        }
        frame = self._find_data_plate(trace, args, kwargs)
        self.plate_name, self._data_frame = frame.name, frame
        self._choose_inputs(frame, frame.name in random_plates, args, kwargs)

        local, global_names = {}, []
        for name, site in trace.iter_stochastic_nodes():
            if all(f.name != frame.name for f in site["cond_indep_stack"]):
                global_names.append(name)
                continue
            fn, value = site["fn"], site["value"]
            transform = biject_to(fn.support)
            unconstrained = transform.inv(value)
            u_event_dim = fn.event_dim + transform.domain.event_dim - transform.codomain.event_dim
            pos = unconstrained.dim() - u_event_dim + frame.dim
            shape = unconstrained.shape[:pos] + unconstrained.shape[pos + 1 :]
            local[name] = dict(
                shape=tuple(shape),
                pos=pos,
                numel=math.prod(shape),
                u_event_dim=u_event_dim,
                support=fn.support,
                frames=[f for f in site["cond_indep_stack"] if f.name != frame.name],
            )
        self.local_sites = local
        self._masked_sites = [n for n in local if trace.nodes[n]["mask"] is not None]

        x = self._rows(args, kwargs)
        total = sum(s["numel"] for s in local.values())
        net = mlp(x.shape[-1], self.hidden_dims, 2 * total)
        # Only the biases are set (loc 0, scale init_scale): the weights keep PyTorch's
        # initialization, so the posteriors of different examples differ from the first
        # step; shrinking them 10x cost 15 nats of test ELBO on MNIST (benchmarks/RESULTS.md).
        with torch.no_grad():
            net[-1].bias.zero_()
            net[-1].bias[total:] = math.log(math.expm1(self.init_scale - _MIN_SCALE))
        self.net = net.to(device=x.device, dtype=x.dtype)
        if global_names:
            hidden = list(local) + enumerated
            self.global_guide = AutoNormal(poutine.block(self.model, hide=hidden))

    def _check_prototype(self, part_trace: Any) -> None:
        # the global AutoNormal reports its prototype to its master, as in an AutoGuideList
        for name, site in part_trace.iter_stochastic_nodes():
            mine = self.prototype_trace.nodes[name]
            if site["value"].shape != mine["value"].shape:
                raise ValueError(f"site {name!r} changed shape while the guide was built")

    def setup(self, *args: Any, **kwargs: Any) -> None:
        """Trace the model on example arguments and create every parameter, without
        recording anything (the first call does this otherwise). Call it to load a
        ``state_dict`` before the first step."""
        if self.prototype_trace is None:
            try:
                self._setup_prototype(*args, **kwargs)
            except Exception:
                self.prototype_trace = None  # set up again next call, not half built
                raise
        if self.global_guide is not None and self.global_guide.prototype_trace is None:
            with poutine.block():
                self._create_plates(*args, **kwargs)
                self.global_guide(*args, **kwargs)
        self._use_stored_encoder()

    def _use_stored_encoder(self) -> None:
        """Takes the param store's tensors for the encoder's weights where it holds them
        under this guide's names (a store restored with ``pyro.get_param_store().load``), as
        Pyro's autoguides do for their parameters. Without this a restored guide encoded with
        fresh weights while training updated the restored tensors, which nothing read."""
        net = self._modules.get("net")  # not self.net: that is a pyro.module statement
        if net is None:
            return
        store = pyro.get_param_store()
        prefix = _make_name(self._pyro_name, "net")
        for path, param in list(net.named_parameters()):
            full = param_with_module_name(prefix, path)
            if full not in store:
                continue
            stored = store[full]
            if stored is param:
                continue
            if (stored.shape, stored.dtype, stored.device) != (
                param.shape,
                param.dtype,
                param.device,
            ):
                continue  # another model's entry: left for fit's stale-entry check
            if not isinstance(stored, torch.nn.Parameter):
                store[full] = torch.nn.Parameter(stored.detach())
                stored = store[full]
            owner, _, leaf = path.rpartition(".")
            net.get_submodule(owner)._parameters[leaf] = stored

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

    def _data_plate(self, plates: dict[str, pyro.plate], rows: int, device) -> pyro.plate:
        f = self._data_frame
        user_plate = self.create_plates is not None or (
            self.master is not None and self.master().create_plates is not None
        )
        if f.name in plates and (user_plate or (self._index_inputs and self.master is not None)):
            return plates[f.name]  # indices chosen by the user, or drawn once by the master
        full = f.full_size or f.size
        if self._index_inputs:  # the model replays the indices drawn here
            return pyro.plate(f.name, full, subsample_size=f.size, dim=f.dim, device=device)
        # The rows at hand are the examples and only the scale N/B matters: the plate's
        # index site is kept out of the trace, so the model keeps its own indices (replayed
        # ones would override a model's subsample=idx) and a hand-written guide part may
        # open its own plate of this name next to this guide.
        indices = torch.arange(rows, device=device)
        with poutine.block(hide_fn=site_is_subsample):
            return pyro.plate(
                f.name, rows if full == f.size else full, subsample=indices, dim=f.dim
            )

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
        if x.shape[-1] != self.net[0].in_features:
            raise ValueError(
                f"AutoAmortizedNormal was built for {self.net[0].in_features} input features "
                f"per example and got {x.shape[-1]}: the latent sites and the encoder are "
                f"those of the first call, so inputs whose shape changes with the batch "
                f"(sequences of varying length) need padding to one length, an input_fn of "
                f"fixed width, or a guide of their own"
            )
        # The encoder computes in its own dtype (as pyro_gen's encoders do), so a guide moved
        # with .double() after it was built on float32 rows still takes them.
        out = self.net(x.to(self.net[0].weight.dtype))
        total = out.shape[-1] // 2
        locs, scales = out[..., :total], F.softplus(out[..., total:]) + _MIN_SCALE
        params, start = {}, 0
        for name, s in self.local_sites.items():
            end = start + s["numel"]
            shape = (x.shape[0],) + s["shape"]
            loc = locs[..., start:end].reshape(shape).movedim(0, s["pos"])
            scale = scales[..., start:end].reshape(shape).movedim(0, s["pos"])
            params[name] = (loc, scale)
            start = end
        return params

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Sample every latent site the guide covers; returns ``{name: value}``."""
        if self.prototype_trace is None:  # called as forward(), not through __call__
            self.setup(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result: dict[str, torch.Tensor] = {}
        if self.global_guide is not None:
            result.update(self.global_guide(*args, **kwargs))
        rows = self._rows(args, kwargs)
        data_plate = self._data_plate(plates, rows.shape[0], rows.device)
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
                    base = dist.Normal(loc, scale).to_event(s["u_event_dim"])
                    transform = biject_to(s["support"])
                    if _is_identity(transform):
                        fn = base
                    else:
                        fn = dist.TransformedDistribution(base, transform.with_cache())
                    result[name] = pyro.sample(name, fn)
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
