"""An amortized autoguide: an encoder guide built by tracing any model with a data plate."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import biject_to
from torch.distributions.transforms import ComposeTransform, IndependentTransform, Transform
from torch.nn import functional as F

from pyro_gen.vae._utils import mlp
from pyro_gen.vae.sites import DATA_PLATE


def _is_identity(t: Transform) -> bool:
    if isinstance(t, IndependentTransform):
        return _is_identity(t.base_transform)
    return isinstance(t, ComposeTransform) and not t.parts


class AutoAmortizedNormal(nn.Module):
    """Amortized mean-field Normal guide for any model whose local latent sites live under
    a plate named ``"data"`` (default), built automatically by tracing the model.

    One MLP maps each example's inputs to a loc and a scale for every local site, in the
    unconstrained space of the site's support (mapped back with ``biject_to``):

    .. math:: q(z_n \\mid x_n) = \\prod_{s \\in \\text{local}} T_{s\\#}\\,
              \\mathcal{N}\\big(\\mu_s(x_n), \\operatorname{diag}\\sigma_s^2(x_n)\\big).

    Global sites (outside the data plate) get a Pyro :class:`~pyro.infer.autoguide.AutoNormal`
    over the model with the local sites blocked. The network input is, by default, every
    tensor argument of the model whose first dimension is the data plate's size, each
    flattened per example and concatenated; pass ``input_fn(*args, **kwargs) -> (B, F)``
    to choose otherwise. The guide is built lazily on its first call (like Pyro's
    autoguides), on the device of the data.

    Args:
        model: a Pyro model callable.
        hidden_dims: hidden sizes of the encoder MLP.
        input_fn: optional map from the model's arguments to a ``(B, F)`` input tensor.
        plate_name: name of the data plate.
        init_scale: initial posterior scale (unconstrained space) of local sites.
        name: name under which the encoder enters Pyro's param store.

    References:
        Kingma & Welling, Auto-Encoding Variational Bayes, arXiv:1312.6114.
        Kucukelbir et al., Automatic Differentiation Variational Inference,
        arXiv:1603.00788 (unconstrained Gaussian parameterization).

    Example:
        >>> def model(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        ...         pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1),
        ...                     obs=x)
        >>> guide = AutoAmortizedNormal(model, hidden_dims=(8,))
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}),
        ...                      pyro.infer.Trace_ELBO())
        >>> loss = svi.step(torch.randn(10, 1))
        >>> sorted(guide.local_sites)
        ['z']
    """

    def __init__(
        self,
        model: Callable,
        hidden_dims: Sequence[int] = (256,),
        input_fn: Callable[..., torch.Tensor] | None = None,
        plate_name: str = DATA_PLATE,
        init_scale: float = 0.1,
        name: str = "auto_amortized",
    ) -> None:
        super().__init__()
        self.model = model
        self.hidden_dims = tuple(hidden_dims)
        self.input_fn = input_fn
        self.plate_name = plate_name
        self.init_scale = init_scale
        self.name = name
        self.net: nn.Module | None = None
        self.global_guide: AutoNormal | None = None
        self.local_sites: dict[str, dict] = {}
        self._input_keys: list[int | str] = []

    # -- set-up ----------------------------------------------------------------------
    def _arguments(self, args: tuple, kwargs: dict) -> dict:
        """The model's arguments by parameter name (by position if it takes ``*args``)."""
        try:
            bound = inspect.signature(self.model).bind(*args, **kwargs)
        except (TypeError, ValueError):
            return {**dict(enumerate(args)), **kwargs}
        out = {}
        for name, value in bound.arguments.items():
            kind = bound.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                out.update({f"{name}[{i}]": v for i, v in enumerate(value)})
            elif kind is inspect.Parameter.VAR_KEYWORD:
                out.update(value)
            else:
                out[name] = value
        return out

    def _find_inputs(self, size: int, args: tuple, kwargs: dict) -> None:
        arguments = self._arguments(args, kwargs)
        keys = [
            k for k, v in arguments.items() if torch.is_tensor(v) and v.dim() and v.shape[0] == size
        ]
        if not keys:
            raise ValueError(
                f"AutoAmortizedNormal found no tensor argument of the model with first "
                f"dimension {size} (the size of plate {self.plate_name!r}) to encode; "
                f"pass input_fn=lambda *args, **kwargs: tensor of shape (batch, features)"
            )
        self._input_keys = keys

    def _inputs(self, *args, **kwargs) -> torch.Tensor:
        if self.input_fn is not None:
            return self.input_fn(*args, **kwargs)
        arguments = self._arguments(args, kwargs)
        missing = [k for k in self._input_keys if arguments.get(k) is None]
        if missing:
            raise ValueError(f"the guide was built to encode the model arguments {missing}")
        parts = [arguments[k] for k in self._input_keys]
        dtype = torch.get_default_dtype()
        return torch.cat([p.reshape(p.shape[0], -1).to(dtype) for p in parts], -1)

    def setup(self, *args, **kwargs) -> None:
        """Trace the model on example arguments and build the networks (done by the first
        call otherwise; call it explicitly to load a ``state_dict`` before training)."""
        trace = poutine.block(poutine.trace(self.model).get_trace)(*args, **kwargs)
        data_frame = None
        local, global_names = {}, []
        for name, site in trace.iter_stochastic_nodes():
            if site_is_subsample(site):
                continue
            frames = site["cond_indep_stack"]
            if any(not f.vectorized for f in frames):
                raise NotImplementedError(
                    f"site {name!r} is under a sequential plate; use vectorized pyro.plate"
                )
            frame = next((f for f in frames if f.name == self.plate_name), None)
            if frame is None:
                global_names.append(name)
                continue
            if frame.full_size is not None and frame.full_size != frame.size:
                raise NotImplementedError(
                    f"plate {self.plate_name!r} is subsampled inside the model; pass the "
                    f"minibatch to the model instead (subsampled plates are not supported)"
                )
            data_frame = frame
            fn, value = site["fn"], site["value"]
            transform = biject_to(fn.support)
            unconstrained = transform.inv(value)
            u_event_dim = fn.event_dim + transform.domain.event_dim - transform.codomain.event_dim
            batch_dims = unconstrained.dim() - u_event_dim
            pos = batch_dims + frame.dim
            if pos < 0 or unconstrained.shape[pos] != frame.size:
                raise NotImplementedError(
                    f"local site {name!r}: its value does not span plate {self.plate_name!r} "
                    f"of size {frame.size} (subsampled plates are not supported)"
                )
            shape = unconstrained.shape[:pos] + unconstrained.shape[pos + 1 :]
            local[name] = dict(
                shape=tuple(shape),
                pos=pos,
                numel=math.prod(shape),
                u_event_dim=u_event_dim,
                event_dim=fn.event_dim,
                frames=[f for f in frames if f.name != self.plate_name],
                support=fn.support,
            )
        for site in trace.nodes.values():
            for f in site.get("cond_indep_stack", ()):
                if f.name == self.plate_name:
                    data_frame = data_frame or f
        if data_frame is None:
            raise ValueError(
                f"AutoAmortizedNormal needs the model's local latent sites under "
                f"pyro.plate({self.plate_name!r}, ...); the model has no such plate"
            )
        if not local:
            raise ValueError(f"the model has no latent sites under plate {self.plate_name!r}")
        self.local_sites = local
        self._data_dim = data_frame.dim
        if self.input_fn is None:
            self._find_inputs(data_frame.size, args, kwargs)
        x = self._inputs(*args, **kwargs)
        total = sum(s["numel"] for s in local.values())
        net = mlp(x.shape[-1], self.hidden_dims, 2 * total)
        with torch.no_grad():  # start near loc 0, scale init_scale
            net[-1].weight.mul_(0.1)
            net[-1].bias.zero_()
            net[-1].bias[total:] = math.log(math.expm1(self.init_scale))
        self.net = net.to(device=x.device, dtype=x.dtype)
        if global_names:
            self.global_guide = AutoNormal(poutine.block(self.model, hide=list(local)))

    # -- guide -----------------------------------------------------------------------
    def _local_params(self, *args, **kwargs) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        x = self._inputs(*args, **kwargs)
        out = self.net(x)
        total = out.shape[-1] // 2
        locs, scales = out[..., :total], F.softplus(out[..., total:]) + 1e-5
        params, start = {}, 0
        for name, s in self.local_sites.items():
            end = start + s["numel"]
            loc = locs[..., start:end].reshape((x.shape[0],) + s["shape"]).movedim(0, s["pos"])
            scale = scales[..., start:end].reshape((x.shape[0],) + s["shape"]).movedim(0, s["pos"])
            params[name] = (loc, scale)
            start = end
        return params

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Sample every latent site of the model; returns ``{name: value}``."""
        if self.net is None:
            self.setup(*args, **kwargs)
        result: dict[str, torch.Tensor] = {}
        if self.global_guide is not None:
            result.update(self.global_guide(*args, **kwargs))
        pyro.module(self.name, self.net)
        params = self._local_params(*args, **kwargs)
        batch = next(iter(params.values()))[0].shape[next(iter(self.local_sites.values()))["pos"]]
        with pyro.plate(self.plate_name, batch, dim=self._data_dim):
            for name, s in self.local_sites.items():
                loc, scale = params[name]
                with ExitStack() as stack:
                    for f in s["frames"]:
                        stack.enter_context(pyro.plate(f.name, f.size, dim=f.dim))
                    base = dist.Normal(loc, scale).to_event(s["u_event_dim"])
                    transform = biject_to(s["support"])
                    if _is_identity(transform):
                        fn = base
                    else:
                        fn = dist.TransformedDistribution(base, transform.with_cache())
                    result[name] = pyro.sample(name, fn)
        return result

    @torch.no_grad()
    def encode(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Posterior location of each local site mapped to its support (the median)."""
        if self.net is None:
            self.setup(*args, **kwargs)
        return {
            name: biject_to(self.local_sites[name]["support"])(loc)
            for name, (loc, _) in self._local_params(*args, **kwargs).items()
        }
