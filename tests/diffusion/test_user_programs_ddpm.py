"""A DDPM around a user's own denoiser (a plain ``nn.Module`` or a ``PyroModule``, taking the
steps as an int64 tensor), built in float64 by hand (no ``torch.set_default_dtype``), trained
and scored the ways a Pyro user would, and fed the mistakes a user makes.

The closed form: a network linear in its input, :math:`\\hat\\epsilon = k_t x_t` with one
learnable :math:`k_t` per step, makes every term of the DDPM bound a Gaussian expectation of a
quadratic, so the exact negative ELBO of each example is known from the betas alone (computed
here without the library's schedule) and Pyro's estimators of it must agree within their
standard error.
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.nn import PyroModule, PyroParam
from torch import nn

from pyro_gen.diffusion import DDPM, VPSDE, NoiseSchedule, ScoreModel, variational_bound
from pyro_gen.infer import fit

D = torch.float64
BETAS = torch.tensor([0.05, 0.2, 0.4, 0.6], dtype=D)
T = len(BETAS)


class LinearEps(nn.Module):
    """A user's eps network: one factor per step, looked up by the int64 step index."""

    def __init__(self, k: torch.Tensor) -> None:
        super().__init__()
        self.k = nn.Parameter(k.clone())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.long, t.dtype  # the DDPM's docs: 1-based integer steps
        return self.k[t - 1].reshape(-1, *(1,) * (x.dim() - 1)) * x


class PyroLinearEps(PyroModule):
    """The same network written as a PyroModule with a PyroParam."""

    def __init__(self, k: torch.Tensor) -> None:
        super().__init__()
        self.k = PyroParam(k.clone())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.k[t - 1].reshape(-1, *(1,) * (x.dim() - 1)) * x


K = torch.tensor([0.3, -0.2, 0.5, 0.9], dtype=D)


def closed_form_neg_elbo(
    x0: torch.Tensor, k: torch.Tensor, param: str = "eps", variance: str = "fixed_small"
) -> torch.Tensor:
    """Exact :math:`-\\mathrm{ELBO}(x_0)` of a 1-D DDPM whose network predicts
    :math:`k_t x_t` in parameterization ``param``, from ``BETAS`` alone."""
    ab = torch.cumprod(1 - BETAS, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=D), ab[:-1]])
    a, s = ab.sqrt(), (1 - ab).sqrt()
    post_var = BETAS * (1 - ab_prev) / (1 - ab)
    c1 = BETAS * ab_prev.sqrt() / (1 - ab)
    # x0_hat = m_t x_t: x_t = a x0 + s eps, v = a eps - s x0, score = -eps / s
    m = {"eps": (1 - s * k) / a, "x0": k, "v": a - s * k, "score": (1 + s**2 * k) / a}[param]
    # the model's variances: step 1 takes the posterior variance of step 2 (Nichol & Dhariwal)
    p_var = torch.cat([post_var[1:2], post_var[1:] if variance == "fixed_small" else BETAS[1:]])

    def sq(t: int) -> torch.Tensor:  # E (x0 - m_t x_t)^2 over x_t ~ q(x_t | x0)
        return (x0 * (1 - m[t] * a[t])) ** 2 + m[t] ** 2 * s[t] ** 2

    mean_T, var_T = a[-1] * x0, s[-1] ** 2
    total = 0.5 * (var_T + mean_T**2 - 1 - var_T.log())  # L_T
    for t in range(1, T):  # steps 2..T: KL(N(mq, vq) || N(mp, vp)), mq - mp = c1 (x0 - x0_hat)
        vq, vp = post_var[t], p_var[t]
        total = total + 0.5 * ((vp / vq).log() + (vq + c1[t] ** 2 * sq(t)) / vp - 1)
    return total + 0.5 * torch.log(2 * math.pi * p_var[0]) + sq(0) / (2 * p_var[0])


X = torch.tensor([[-1.3], [0.2], [0.9], [2.0]], dtype=D)


def _estimate(loss, m: DDPM, reps: int = 8) -> tuple[float, float]:
    vals = torch.tensor([loss.loss(m.model, m.guide, X) for _ in range(reps)])
    return float(vals.mean()), float(vals.std() / math.sqrt(reps))


@pytest.mark.parametrize(
    "form, loss",
    [
        ("full_chain", Trace_ELBO),
        ("full_chain", TraceMeanField_ELBO),
        ("time_plate", TraceMeanField_ELBO),
        ("time_plate_eval", TraceMeanField_ELBO),  # step 1 exact, strata of steps 2..T
    ],
)
def test_the_elbo_of_a_users_linear_denoiser_is_its_closed_form(form, loss):
    torch.manual_seed(0)
    if form == "time_plate_eval":
        m = DDPM(LinearEps(K), (1,), NoiseSchedule(BETAS), eval_strata=2).double().eval()
    else:
        m = DDPM(LinearEps(K), (1,), NoiseSchedule(BETAS), form=form, time_samples=T).double()
    exact = float(closed_form_neg_elbo(X[:, 0], K).sum())
    est, se = _estimate(loss(num_particles=2000, vectorize_particles=True, max_plate_nesting=2), m)
    assert abs(est - exact) < 5 * se + 1e-6, (est, exact, se)
    # and a wrong closed form (another k) is far outside that band
    assert abs(est - float(closed_form_neg_elbo(X[:, 0], K + 1.0).sum())) > 10 * se


@pytest.mark.parametrize(
    "param, variance",
    [("x0", "fixed_small"), ("v", "fixed_small"), ("score", "fixed_small"), ("eps", "fixed_large")],
)
def test_every_parameterization_and_fixed_variance_gives_the_closed_form_bound(param, variance):
    torch.manual_seed(2)
    m = DDPM(LinearEps(K), (1,), NoiseSchedule(BETAS), form="full_chain", param=param,
             variance=variance).double()  # fmt: skip
    exact = float(closed_form_neg_elbo(X[:, 0], K, param, variance).sum())
    loss = TraceMeanField_ELBO(num_particles=2000, vectorize_particles=True)
    est, se = _estimate(loss, m)
    assert abs(est - exact) < 5 * se + 1e-6, (est, exact, se)
    # another parameterization's (or variance's) closed form is not this one
    other = ("eps", "fixed_small") if (param, variance) != ("eps", "fixed_small") else ("x0",)
    assert abs(est - float(closed_form_neg_elbo(X[:, 0], K, *other).sum())) > 10 * se


def test_the_closed_form_gradient_is_what_svi_follows():
    """SGD on the closed form and SVI (analytic KLs, many particles) on the DDPM move k the
    same way: the network's parameter gets the bound's gradient, not some other objective's."""
    torch.manual_seed(1)
    k = K.clone().requires_grad_()
    closed_form_neg_elbo(X[:, 0], k).sum().backward()
    m = DDPM(LinearEps(K), (1,), NoiseSchedule(BETAS), form="full_chain").double()
    pyro.clear_param_store()
    svi_loss = TraceMeanField_ELBO(num_particles=4000, vectorize_particles=True)
    svi_loss.loss_and_grads(m.model, m.guide, X)
    grad = m.net.k.grad
    assert torch.allclose(grad, k.grad, rtol=0.05, atol=0.05), (grad, k.grad)
    assert (grad.sign() == k.grad.sign()).all()


def _trained(net: nn.Module, how: str) -> torch.Tensor:
    pyro.clear_param_store()
    torch.manual_seed(3)
    m = DDPM(net, (1,), NoiseSchedule(BETAS), form="full_chain")
    x = torch.randn(32, 1, dtype=D)
    if how == "svi":
        svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 0.05}), TraceMeanField_ELBO())
        for _ in range(5):
            svi.step(x)
    else:
        fit(m, x, steps=5, batch_size=32, optim=pyro.optim.Adam({"lr": 0.05}), compile=False,
            progress=False, loss=TraceMeanField_ELBO())  # fmt: skip
    return next(iter(net.parameters())).detach().clone()


@pytest.mark.parametrize("how", ["svi", "fit"])
def test_a_pyromodule_denoiser_trains_exactly_as_the_plain_module(how):
    # a PyroModule registers its params under its own names, and the DDPM leaves them to it
    # (each tensor once in the param store): one optimizer step per SVI step, as the plain one
    plain = _trained(LinearEps(K), how)
    pyro_net = _trained(PyroLinearEps(K), how)
    assert not torch.equal(plain, K)  # training moved it
    torch.testing.assert_close(pyro_net, plain, rtol=1e-12, atol=1e-12)


def test_scalar_data_of_event_shape_empty_is_the_one_feature_model():
    """Data of shape (N,) with event_shape=(): the bound and the samples equal those of the
    same network on (N, 1); the shape check of the network's output indexed dim 1 of (N,)."""

    class ScalarEps(LinearEps):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            assert x.dim() == 1
            return super().forward(x, t)

    scalar = DDPM(ScalarEps(K), (), NoiseSchedule(BETAS), form="full_chain").double()
    column = DDPM(LinearEps(K), (1,), NoiseSchedule(BETAS), form="full_chain").double()
    for m, x in ((scalar, X[:, 0]), (column, X)):
        torch.manual_seed(5)
        m.loss = TraceMeanField_ELBO().loss(m.model, m.guide, x)
        torch.manual_seed(6)
        m.draws = m.sample(5)
    assert scalar.loss == pytest.approx(column.loss, rel=1e-12)
    torch.testing.assert_close(scalar.draws, column.draws[:, 0])
    with pytest.raises(ValueError, match="learned_range.*event_shape=\\(\\).*fixed_small"):
        DDPM(ScalarEps(K), (), NoiseSchedule(BETAS), variance="learned_range")


def test_betas_given_as_a_list_or_tensor_are_the_schedule():
    expected = NoiseSchedule(BETAS)
    for betas in (BETAS.tolist(), NoiseSchedule(BETAS), BETAS.float()):
        s = DDPM(LinearEps(K), (1,), betas).schedule
        assert s.num_timesteps == T
        torch.testing.assert_close(s.alphas_cumprod, expected.alphas_cumprod)
    with pytest.raises(ValueError, match="schedule .*strictly inside \\(0, 1\\)"):
        DDPM(LinearEps(K), (1,), [0.1, 1.2])
    with pytest.raises(ValueError, match="schedule .*strictly inside \\(0, 1\\)"):
        DDPM(LinearEps(K), (1,), [0.0, 0.1])
    with pytest.raises(ValueError, match="schedule .*1-D"):
        DDPM(LinearEps(K), (1,), [[0.1, 0.2]])
    with pytest.raises(TypeError, match="schedule must be a NoiseSchedule, a name"):
        DDPM(LinearEps(K), (1,), {"betas": 0.1})
    with pytest.raises(ValueError, match="time steps T must be an integer >= 1, got 0"):
        DDPM(LinearEps(K), (1,), "linear", timesteps=0)


class TupleNet(nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor):  # noqa: ANN201
        return x, t


class NoTime(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class Float32Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.cat([x, t[:, None].to(x.dtype)], -1))


@pytest.mark.parametrize(
    "net, error, match",
    [
        (TupleNet(), TypeError, "DDPM's network returned a tuple, not a tensor"),
        (NoTime(), TypeError, "calls its network as net\\(x, t\\).*NoTime does not take"),
        (
            Float32Net(),
            TypeError,
            "float32 parameters but was given float64 data.*to\\(torch.float64\\)",
        ),
    ],
)
def test_a_users_network_mistake_is_one_error_naming_the_network(net, error, match):
    m = DDPM(net, (1,), NoiseSchedule(BETAS))  # float32 model and network, float64 data
    with pytest.raises(error, match=match):
        Trace_ELBO().loss(m.model, m.guide, X)
    if isinstance(net, Float32Net):
        # the float32 network runs on float32 data: only the mismatch was refused
        assert torch.isfinite(torch.tensor(Trace_ELBO().loss(m.model, m.guide, X.float())))
    else:
        with pytest.raises(error, match=match):
            m.sample(2)


def test_a_score_models_network_mistakes_are_named_too():
    x = torch.randn(4, 1)
    m = ScoreModel(TupleNet(), VPSDE(), (1,))
    with pytest.raises(TypeError, match="score model's network returned a tuple"):
        Trace_ELBO().loss(m.model, m.guide, x)
    m = ScoreModel(Float32Net().double(), VPSDE(), (1,))
    with pytest.raises(TypeError, match="float64 parameters but was given float32 data"):
        Trace_ELBO().loss(m.model, m.guide, x)
    assert torch.isfinite(torch.tensor(Trace_ELBO().loss(m.model, m.guide, x.double())))


def test_ddim_refuses_a_negative_eta():
    m = DDPM(LinearEps(K), (1,), NoiseSchedule(BETAS)).double()
    with pytest.raises(ValueError, match="eta must be a number >= 0"):
        m.sample(2, "ddim", steps=2, eta=-1.0)


class ChannelsLast(nn.Module):
    """A user's image denoiser written for (N, H, W, C) arrays."""

    def __init__(self, layout: str) -> None:
        super().__init__()
        self.layout = layout
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.layout == "nhwc":
            return self.w * x.permute(0, 2, 3, 1)
        if self.layout == "flat":
            return self.w * x.flatten(1)
        return self.w * x


def test_an_image_network_returning_channels_last_is_refused_and_other_layouts_kept():
    # (N, H, W, C) for (N, C, H, W) holds the right number of values, which the DDPM
    # reshaped silently into scrambled pixels
    x = torch.rand(2, 3, 4, 4)
    m = DDPM(ChannelsLast("nhwc"), (3, 4, 4), NoiseSchedule(BETAS))
    with pytest.raises(ValueError, match="another layout.*\\(2, 3, 4, 4\\).*permute"):
        Trace_ELBO().loss(m.model, m.guide, x)
    # flattened rows and the identity layout are the same values in the same order
    x_t = torch.randn(2, 3, 4, 4)
    t = torch.full((2,), 2)
    same = DDPM(ChannelsLast("nchw"), (3, 4, 4), NoiseSchedule(BETAS)).predict(x_t, t)[0]
    flat = DDPM(ChannelsLast("flat"), (3, 4, 4), NoiseSchedule(BETAS)).predict(x_t, t)[0]
    torch.testing.assert_close(flat, same)
    torch.testing.assert_close(same, x_t)
    one = DDPM(ChannelsLast("nhwc"), (1, 4, 4), NoiseSchedule(BETAS)).predict(x_t[:, :1], t)[0]
    torch.testing.assert_close(one, x_t[:, :1])  # one channel: last or first, the same order


def test_a_float64_network_in_a_ddpm_built_under_float32_defaults_samples_in_float64():
    # it trains on float64 data (the schedule's float32 buffers promote); its draws were made
    # in the schedule's float32, which the network refused in every sampler and Predictive

    class MatmulEps(LinearEps):  # a matmul, as in nn.Linear, refuses mixed dtypes
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return super().forward(x @ torch.eye(1, dtype=self.k.dtype), t)

    m = DDPM(MatmulEps(K), (1,), NoiseSchedule(BETAS), form="full_chain")
    reference = DDPM(MatmulEps(K), (1,), NoiseSchedule(BETAS), form="full_chain").double()
    assert m.schedule.betas.dtype == torch.float32
    assert math.isfinite(TraceMeanField_ELBO().loss(m.model, m.guide, X))
    for draw in (
        lambda d: d.sample(5),
        lambda d: d.sample(5, "ddim", steps=2, eta=1.0),
        lambda d: pyro.infer.Predictive(d.model, num_samples=2)(None, 5)["x_0"],
    ):
        torch.manual_seed(7)
        x = draw(m)
        torch.manual_seed(7)
        expected = draw(reference)
        assert x.dtype == D
        # the same float64 noise through float32-rounded coefficients
        torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-6)


def test_variational_bound_and_bits_per_dim_average_to_the_closed_form():
    # one Monte Carlo draw per term and example: over 1000 copies of each point the mean
    # total is the exact bound
    torch.manual_seed(8)
    m = DDPM(LinearEps(K), (1,), NoiseSchedule(BETAS)).double()
    reps = 1000
    out = variational_bound(m, X.repeat(reps, 1))
    total = out["total"].reshape(reps, len(X))
    exact = closed_form_neg_elbo(X[:, 0], K)
    se = total.std(0) / math.sqrt(reps)
    assert bool(((total.mean(0) - exact).abs() < 5 * se).all()), (total.mean(0), exact, se)
    torch.manual_seed(8)
    bpd = m.bits_per_dim(X.repeat(reps, 1))
    assert bpd == pytest.approx(float(exact.mean()) / math.log(2), abs=5 * float(se.max()))


def test_bits_per_dim_names_context_for_labels_given_by_keyword():
    class LabelEps(LinearEps):
        def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return super().forward(x, t) + y[:, None].to(x.dtype)

    m = DDPM(LabelEps(K), (1,), NoiseSchedule(BETAS)).double()
    y = torch.tensor([0, 1, 0, 1])
    with pytest.raises(TypeError, match="unknown keyword 'y'.*context=\\{'y': \\.\\.\\.\\}"):
        m.bits_per_dim(X, y=y)
    torch.manual_seed(9)
    by_context = m.bits_per_dim(X, context={"y": y})
    torch.manual_seed(9)
    by_hand = float(variational_bound(m, X, context={"y": y})["total"].mean()) / math.log(2)
    assert by_context == pytest.approx(by_hand, rel=1e-12)


def test_a_score_model_around_a_network_of_whole_steps_names_the_float_times():
    # LinearEps's DDPM-style step lookup, given float times, failed in torch's indexing
    class StepTable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(2, 1)

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.table(t) * x

    m = ScoreModel(StepTable(), VPSDE(), (1,))
    x = torch.randn(4, 1)
    with pytest.raises(TypeError, match="float times.*takes only whole steps"):
        Trace_ELBO().loss(m.model, m.guide, x)
    with pytest.raises(TypeError, match="float times.*takes only whole steps"):
        m.sample(2, "pc", steps=2)

    class Broken(StepTable):  # an error that long times do not cure keeps its own message
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.table(t.long()) @ torch.ones(3, 3)

    broken = ScoreModel(Broken(), VPSDE(), (1,))
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        Trace_ELBO().loss(broken.model, broken.guide, x)
