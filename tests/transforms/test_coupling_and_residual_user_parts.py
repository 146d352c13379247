"""pyro_gen's coupling and residual layers with a Pyro user's own parts: a hypernet, a
residual branch, an element-wise map.

The hypernet as Pyro's flow tutorial writes one: ``DenseNN(split, hidden, param_dims=[n, n])``
returns one tensor per parameter (a tuple), which Pyro's ``AffineCoupling`` takes. Swapped
into pyro_gen's ``Coupling(mask, hypernet, Affine())`` (and ``ConditionalCoupling`` with a
``ConditionalDenseNN``) the same network used to fail with ``'tuple' object has no attribute
'dim'``. Checked against the closed form of the map written from the network's own outputs,
an autograd Jacobian, and a Pyro SVI step that reaches the network's parameters.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.nn import ConditionalDenseNN, DenseNN

from pyro_gen import transforms as T

F64 = torch.float64


def _perturbed(net: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net.double()


def _closed_form(x: torch.Tensor, mean: torch.Tensor, raw: torch.Tensor, bound: float = 3.0):
    """``y = [x_1, x_2 e^{s} + mean]``, ``s = B tanh(raw / B)``, ``log|det J| = sum s``."""
    s = bound * torch.tanh(raw / bound)
    y = torch.cat([x[..., :2], x[..., 2:] * s.exp() + mean], -1)
    return y, s.sum(-1)


def test_pyros_densenn_hypernet_drives_an_affine_coupling() -> None:
    torch.manual_seed(0)
    net = _perturbed(DenseNN(2, [8], param_dims=[2, 2]))
    t = T.Coupling(T.half_mask(4), net, T.Affine())
    x = torch.randn(5, 4, dtype=F64)
    mean, raw = net(x[..., :2])
    y_expected, ladj_expected = _closed_form(x, mean, raw)
    y = t(x)
    torch.testing.assert_close(y, y_expected)
    torch.testing.assert_close(t.log_abs_det_jacobian(x, y), ladj_expected)
    torch.testing.assert_close(T.Coupling(T.half_mask(4), net, T.Affine()).inv(y), x)
    jac = torch.autograd.functional.jacobian(lambda v: t(v.unsqueeze(0))[0], x[0])
    torch.testing.assert_close(torch.linalg.slogdet(jac)[1], ladj_expected[0])


def test_pyros_conditional_densenn_drives_a_conditional_coupling() -> None:
    torch.manual_seed(1)
    net = _perturbed(ConditionalDenseNN(2, 3, [8], param_dims=[2, 2]))
    t = T.ConditionalCoupling(T.half_mask(4), net, T.Affine())
    x, c = torch.randn(5, 4, dtype=F64), torch.randn(5, 3, dtype=F64)
    mean, raw = net(x[..., :2], context=c)
    y_expected, ladj_expected = _closed_form(x, mean, raw)
    tc = t.condition(c)
    y = tc(x)
    torch.testing.assert_close(y, y_expected)
    torch.testing.assert_close(tc.log_abs_det_jacobian(x, y), ladj_expected)
    torch.testing.assert_close(t.condition(c).inv(y), x)


def test_a_flow_with_the_users_hypernet_trains_with_pyros_svi() -> None:
    """The density of the tutorial's program is the change of variables through the closed
    form, and one SVI step moves every weight of the user's network."""
    torch.manual_seed(2)
    pyro.clear_param_store()
    net = _perturbed(DenseNN(2, [8], param_dims=[2, 2]))
    t = T.Coupling(T.half_mask(4), net, T.Affine())
    base = dist.Normal(torch.zeros(4, dtype=F64), 1.0).to_event(1)
    data = torch.randn(16, 4, dtype=F64)

    def model(x: torch.Tensor) -> None:
        pyro.module("coupling", t)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.TransformedDistribution(base, [t]), obs=x)

    with torch.no_grad():
        u = data.clone()
        mean, raw = net(u[..., :2])
        s = 3.0 * torch.tanh(raw / 3.0)
        u[..., 2:] = (data[..., 2:] - mean) * (-s).exp()
        expected = -(base.log_prob(u) - s.sum(-1)).sum()
    svi = SVI(model, lambda x: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    before = [p.detach().clone() for p in net.parameters()]
    loss = svi.step(data)
    # Affine keeps 1/B as a float32 constant (B tanh(raw * (1/B))): 1e-8 relative
    assert loss == pytest.approx(float(expected), rel=1e-7)
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters()))


@pytest.mark.parametrize(
    "param_dims, match",
    [([2, 2, 2], r"returned 3 values; .* param_dims=\[2, 2\]"), ([1, 1], "needs 2 features")],
    ids=["too_many", "too_few_features"],
)
def test_a_hypernet_of_other_outputs_is_one_clear_error(param_dims, match) -> None:
    t = T.Coupling(T.half_mask(4), DenseNN(2, [8], param_dims=param_dims), T.Affine())
    with pytest.raises(ValueError, match=match):
        t(torch.randn(3, 4))


# ------------------------------------------------------------------ a user's residual branch


class _Linear(torch.nn.Module):
    """``g(y) = A y``: a user's residual branch whose inverse is a linear solve."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(a)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y @ self.a.T


def _residual_flow(a: torch.Tensor) -> dist.TransformedDistribution:
    block = T.ResidualBlock(2, _Linear(a), logdet="exact", tol=1e-12, cache_size=0)
    return dist.TransformedDistribution(
        dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1), [block]
    )


def test_a_users_contractive_branch_samples_the_closed_form() -> None:
    r"""``x = u + A x`` is solved by ``x = (I + A)^{-1} u``; the density is
    :math:`\log \mathcal N(x + A x) + \log|\det(I + A)|`."""
    a = torch.tensor([[0.3, -0.2], [0.1, 0.25]], dtype=F64)
    d = _residual_flow(a)
    torch.manual_seed(3)
    x = d.sample((5,))
    torch.manual_seed(3)
    u = d.base_dist.sample((5,))
    eye = torch.eye(2, dtype=F64)
    torch.testing.assert_close(x, torch.linalg.solve(eye + a, u.T).T)
    expected = d.base_dist.log_prob(x + x @ a.T) + torch.linalg.slogdet(eye + a)[1]
    torch.testing.assert_close(d.log_prob(x), expected)


def test_a_users_branch_that_is_no_contraction_is_one_clear_error() -> None:
    """``A = 2.5 I``: the fixed-point iteration ``x <- u - A x`` diverges. The draws used
    to come out unconverged (not the inverse of the density map), silently."""
    d = _residual_flow(2.5 * torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match=r"did not converge in max_iter=500 .* contraction"):
        d.sample((5,))


# ------------------------------------------------------------------ a user's element-wise map


class _Scale(T.ElementwiseBijection):
    """A user's element-wise map ``y = x e^{s}`` (the ``ElementwiseBijection`` docstring's);
    ``summed`` returns the log-derivative summed over the event, Pyro's
    ``log_abs_det_jacobian`` convention, instead of per element."""

    num_params = 1

    def __init__(self, summed: bool = False) -> None:
        super().__init__()
        self.summed = summed

    def _ladj(self, s: torch.Tensor) -> torch.Tensor:
        return s.sum(-1) if self.summed else s

    def forward(self, x, params):  # noqa: ANN001, ANN201
        (s,) = params
        return x * s.exp(), self._ladj(s)

    def inverse(self, y, params):  # noqa: ANN001, ANN201
        (s,) = params
        return y * (-s).exp(), self._ladj(s)


_LAYERS = {
    "vector": lambda scale: T.coupling(4, scale, hidden_dims=[8]),
    "checkerboard": lambda scale: T.coupling(
        (2, 2, 2), scale, mask="checkerboard", hidden_channels=4, num_blocks=1
    ),
}


@pytest.mark.parametrize("layer", sorted(_LAYERS))
def test_a_users_elementwise_map_gives_the_autograd_density(layer: str) -> None:
    torch.manual_seed(4)
    t = _perturbed(_LAYERS[layer](_Scale()))
    shape = t.event_shape
    base = dist.Normal(torch.zeros(shape, dtype=F64), 1.0).to_event(len(shape))
    x = torch.randn(3, *shape, dtype=F64)
    u = t.inv(x)
    expected = []
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: t(v).reshape(-1), u[i]).reshape(
            x[i].numel(), -1
        )
        expected.append(base.log_prob(u[i]) - torch.linalg.slogdet(jac)[1])
    lp = dist.TransformedDistribution(base, [t]).log_prob(x)
    torch.testing.assert_close(lp, torch.stack(expected))


@pytest.mark.parametrize("layer", sorted(_LAYERS))
def test_a_users_elementwise_map_returning_a_summed_log_derivative_is_one_clear_error(layer):
    """Summed, every row's density used to get the whole batch's log-determinant."""
    t = _LAYERS[layer](_Scale(summed=True))
    x = torch.randn(5, *t.event_shape)
    with pytest.raises(ValueError, match=r"_Scale returned a log-derivative of shape .* per elem"):
        dist.TransformedDistribution(
            dist.Normal(torch.zeros(t.event_shape), 1.0).to_event(len(t.event_shape)), [t]
        ).log_prob(x)


def test_a_users_elementwise_map_without_num_params_is_one_clear_error() -> None:
    """The class in the ``ElementwiseBijection`` docstring with its ``num_params = 1`` left
    out: the conditioner got no outputs and the layer failed with a bare size mismatch."""

    class NoCount(_Scale):
        num_params = 0

    with pytest.raises(ValueError, match=r"NoCount.num_params is 0: .* class attribute of NoCount"):
        T.coupling(4, NoCount(), hidden_dims=[8])
    with pytest.raises(ValueError, match=r"NoCount.num_params is 0"):
        T.ConditionalCoupling(T.half_mask(4), ConditionalDenseNN(2, 3, [8], [2]), NoCount())
