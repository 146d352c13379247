"""The encoder of :class:`~pyro_gen.vae.autoguide.AutoAmortizedNormal`: one MLP whose output
holds, for every local site, a loc and a scale in the unconstrained space of its support, and
the Normal posteriors read from it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn.module import _make_name
from pyro.params.param_store import param_with_module_name
from pyro.poutine.indep_messenger import CondIndepStackFrame
from torch.distributions import biject_to
from torch.distributions.transforms import ComposeTransform, IndependentTransform, Transform
from torch.nn import functional as F

from pyro_gen.vae._utils import mlp

#: Default initial posterior scale (unconstrained space) of the local sites: on Pyro's MNIST
#: VAE it beat 0.1, 0.3 and 2 (by 0.5-1.6 nats) and the example's hand-written guide
#: (benchmarks/autoguide_init_scale.py, benchmarks/RESULTS.md).
DEFAULT_INIT_SCALE = 1.0
#: Floor of the local posteriors' scales (softplus output + MIN_SCALE), for stable gradients.
MIN_SCALE = 1e-5


def local_site(site: dict[str, Any], frame: CondIndepStackFrame) -> dict[str, Any]:
    """Where the traced latent ``site`` under the data plate ``frame`` finds its posterior's
    parameters in the encoder's output: the ``shape`` of one example's unconstrained value,
    its number of entries, the position ``pos`` of the data plate's dim, the unconstrained
    event dim, the site's support and its other plates.

    Example:
        >>> import pyro
        >>> def model():
        ...     with pyro.plate("data", 5) as plate:
        ...         pyro.sample("z", dist.LogNormal(0.0, 1.0).expand([3]).to_event(1))
        >>> site = pyro.poutine.trace(model).get_trace().nodes["z"]
        >>> s = local_site(site, site["cond_indep_stack"][0])
        >>> s["shape"], s["numel"], s["pos"], s["u_event_dim"], s["frames"]
        ((3,), 3, 0, 1, [])
    """
    fn, value = site["fn"], site["value"]
    transform = biject_to(fn.support)
    unconstrained = transform.inv(value)
    u_event_dim = fn.event_dim + transform.domain.event_dim - transform.codomain.event_dim
    pos = unconstrained.dim() - u_event_dim + frame.dim
    shape = unconstrained.shape[:pos] + unconstrained.shape[pos + 1 :]
    return dict(
        shape=tuple(shape),
        pos=pos,
        numel=math.prod(shape),
        u_event_dim=u_event_dim,
        support=fn.support,
        frames=[f for f in site["cond_indep_stack"] if f.name != frame.name],
    )


def make_encoder(
    x: torch.Tensor, hidden_dims: Sequence[int], total: int, init_scale: float
) -> torch.nn.Sequential:
    """The MLP from rows like ``x`` (its width, device and dtype) to ``total`` locs and
    ``total`` scales (before softplus), starting at loc 0 and scale ``init_scale``.

    Example:
        >>> net = make_encoder(torch.zeros(4, 3), (8,), total=2, init_scale=0.5)
        >>> bias = net[-1].bias.detach()  # two locs, then two scales before softplus
        >>> bias[:2].tolist(), (F.softplus(bias[2:]) + MIN_SCALE).tolist()
        ([0.0, 0.0], [0.5, 0.5])
        >>> sites = {"z": {"shape": (2,), "pos": 0, "numel": 2}}
        >>> loc, scale = local_params(net, sites, torch.zeros(4, 3))["z"]
        >>> loc.shape, scale.shape
        (torch.Size([4, 2]), torch.Size([4, 2]))
    """
    net = mlp(x.shape[-1], hidden_dims, 2 * total)
    # Only the biases are set (loc 0, scale init_scale): the weights keep PyTorch's
    # initialization, so the posteriors of different examples differ from the first
    # step; shrinking them 10x cost 15 nats of test ELBO on MNIST (benchmarks/RESULTS.md).
    with torch.no_grad():
        net[-1].bias.zero_()
        net[-1].bias[total:] = math.log(math.expm1(init_scale - MIN_SCALE))
    return net.to(device=x.device, dtype=x.dtype)


@torch.no_grad()
def start_locs_at(net: torch.nn.Sequential, x: torch.Tensor, locs: torch.Tensor) -> None:
    """Sets the encoder's location head (the first ``total`` outputs of its last layer) so
    that it maps the rows ``x`` to the unconstrained locations ``locs``, ``(rows, total)``;
    the scale head is left as :func:`make_encoder` made it.

    Pyro's autoguides start each site's loc at ``init_loc_fn``'s value; the encoder's loc
    is a function of the example, so it starts as the function that gives each example its
    value. Where every example has the same value that is weights 0 and bias the value:
    exact for every example, seen or not. Where values differ per example (values the user
    chose, see :func:`~pyro_gen.vae.autoguide_init.per_example_locs`), the head is the
    minimum-norm least-squares fit from the last hidden layer's features of ``x`` (an affine
    map, so exact for the rows of ``x`` when they are at most that layer's width + 1 in
    general position), which carries over to new examples as far as the inputs explain the
    values. A head set this way is a state the trained encoder could be in, not a special
    case, so training, checkpoints and the compiled step treat it like any other.

    Example:
        >>> net = make_encoder(torch.zeros(5, 3), (8,), total=2, init_scale=1.0)
        >>> start_locs_at(net, torch.randn(5, 3), torch.tensor([[0.5, -1.0]]).expand(5, 2))
        >>> sites = {"z": {"shape": (2,), "pos": 0, "numel": 2}}
        >>> local_params(net, sites, torch.randn(7, 3))["z"][0][:2].tolist()  # any example
        [[0.5, -1.0], [0.5, -1.0]]
        >>> x, values = torch.randn(5, 3), torch.randn(5, 2)  # one value per example
        >>> start_locs_at(net, x, values)
        >>> torch.allclose(local_params(net, sites, x)["z"][0], values, atol=1e-4)
        True
    """
    last = net[-1]
    total = locs.shape[-1]
    weight = last.weight.new_zeros(total, last.in_features)
    if (locs == locs[:1]).all():
        bias = locs[0]
    else:
        # float64: the features of nearby examples are close, and the fit subtracts them
        h = net[:-1](x.to(last.weight.dtype)).double()
        values = locs.double()
        h_mean, values_mean = h.mean(0), values.mean(0)
        weight_t = torch.linalg.pinv(h - h_mean) @ (values - values_mean)
        weight, bias = weight_t.T, values_mean - h_mean @ weight_t
    last.weight[:total] = weight.to(last.weight)
    last.bias[:total] = bias.to(last.bias)


def local_params(
    net: torch.nn.Sequential, local_sites: dict[str, dict[str, Any]], x: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The loc and scale of each local site's posterior for the rows ``x``, the data plate's
    dim at the site's position (see :func:`make_encoder` for an example)."""
    if x.shape[-1] != net[0].in_features:
        raise ValueError(
            f"AutoAmortizedNormal was built for {net[0].in_features} input features "
            f"per example and got {x.shape[-1]}: the latent sites and the encoder are "
            f"those of the first call, so inputs whose shape changes with the batch "
            f"(sequences of varying length) need padding to one length, an input_fn of "
            f"fixed width, or a guide of their own"
        )
    # The encoder computes in its own dtype (as pyro_gen's encoders do), so a guide moved
    # with .double() after it was built on float32 rows still takes them.
    out = net(x.to(net[0].weight.dtype))
    total = out.shape[-1] // 2
    locs, scales = out[..., :total], F.softplus(out[..., total:]) + MIN_SCALE
    params, start = {}, 0
    for name, s in local_sites.items():
        end = start + s["numel"]
        shape = (x.shape[0],) + s["shape"]
        loc = locs[..., start:end].reshape(shape).movedim(0, s["pos"])
        scale = scales[..., start:end].reshape(shape).movedim(0, s["pos"])
        params[name] = (loc, scale)
        start = end
    return params


def local_posterior(
    loc: torch.Tensor, scale: torch.Tensor, site: dict[str, Any]
) -> dist.TorchDistribution:
    """The Normal of ``loc`` and ``scale`` mapped onto the site's support.

    Example:
        >>> s = {"u_event_dim": 1, "support": dist.constraints.positive}
        >>> local_posterior(torch.zeros(2), torch.ones(2), s).sample().min() > 0
        tensor(True)
    """
    base = dist.Normal(loc, scale).to_event(site["u_event_dim"])
    transform = biject_to(site["support"])
    if is_identity(transform):
        return base
    if torch.jit.is_tracing() and site["u_event_dim"]:
        # Under torch.jit tracing (JitTrace_ELBO) every size is a traced tensor, and a
        # transform that computes its output shape in Python fails on it
        # (CorrCholeskyTransform rounds a square root: LKJCholesky sites raised "Tensor
        # doesn't define __round__"). The event sizes are the site's, fixed by the model,
        # so they are given as ints; the batch sizes stay traced.
        base._event_shape = torch.Size(site["shape"][len(site["shape"]) - site["u_event_dim"] :])
    return dist.TransformedDistribution(base, transform.with_cache())


def is_identity(t: Transform) -> bool:
    """Whether ``t`` (from ``biject_to``) leaves values as they are: a real support.

    Example:
        >>> real, positive = dist.constraints.real_vector, dist.constraints.positive
        >>> is_identity(biject_to(real)), is_identity(biject_to(positive))
        (True, False)
    """
    if isinstance(t, IndependentTransform):
        return is_identity(t.base_transform)
    return isinstance(t, ComposeTransform) and not t.parts


def use_stored_encoder(net: torch.nn.Module, pyro_name: str) -> None:
    """Takes the param store's tensors for the encoder's weights where it holds them under
    the guide's names (``pyro_name``'s ``net``; a store restored with
    ``pyro.get_param_store().load``), as Pyro's autoguides do for their parameters. Without
    this a restored guide encoded with fresh weights while training updated the restored
    tensors, which nothing read.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> stored = pyro.param("AutoAmortizedNormal.net$$$0.bias", torch.ones(2))
        >>> use_stored_encoder(net, "AutoAmortizedNormal")
        >>> net[0].bias.tolist()
        [1.0, 1.0]
    """
    store = pyro.get_param_store()
    prefix = _make_name(pyro_name, "net")
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
