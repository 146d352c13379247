"""The M2 model: TraceEnum_ELBO's enumerated bound against the label summed out by hand."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from torch.nn import functional as F

from pyro_gen.infer import evaluate_elbo, fit
from pyro_gen.vae.semi_supervised import SSVAE, semi_supervised_batches

C, ZD = 3, 2


@pytest.fixture
def m2():
    pyro.clear_param_store()
    torch.manual_seed(0)
    return SSVAE((6,), num_classes=C, z_dim=ZD, hidden_dims=(8,), alpha=2.0)


def by_hand(m2, x, y=None):
    """-(bound summed over the batch) with the same random draws as TraceEnum_ELBO: the
    enumerated guide draws z for every label at once, shape (C, batch, ZD)."""
    ys = torch.arange(C)[:, None] if y is None else y
    onehot = F.one_hot(ys, C).float()
    loc, scale, _ = m2.encoder(x, onehot)
    q_z = dist.Normal(loc, scale).to_event(1)
    z = q_z.rsample()
    log_lik = m2.decoder(z, context=onehot).log_prob(x)
    elbo_y = (
        log_lik
        + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        - torch.log(torch.tensor(float(C)))
        - q_z.log_prob(z)
    )
    log_q_y = m2.logits(x).log_softmax(-1)
    if y is None:  # sum over labels weighted by q(y|x), plus the entropy of q(y|x)
        bound = (log_q_y.exp().T * elbo_y).sum(0) - (log_q_y.exp() * log_q_y).sum(-1)
    else:
        bound = elbo_y + m2.alpha * log_q_y.gather(-1, y[:, None])[:, 0]
    return -bound.sum()


def test_enumerated_bound_is_the_label_summed_out_by_hand(m2):
    x = torch.rand(5, 6).round()
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    pyro.set_rng_seed(3)
    enumerated = elbo.differentiable_loss(m2.model, m2.guide, x)
    pyro.set_rng_seed(3)
    hand = by_hand(m2, x)
    assert torch.allclose(enumerated, hand, rtol=1e-5)
    # labelled: y observed, plus alpha * log q(y|x) as the model's factor (training mode)
    y = torch.tensor([0, 1, 2, 2, 1])
    pyro.set_rng_seed(4)
    labelled = elbo.differentiable_loss(m2.model, m2.guide, x, y)
    pyro.set_rng_seed(4)
    assert torch.allclose(labelled, by_hand(m2, x, y), rtol=1e-5)


def test_evaluation_leaves_the_classification_term_out(m2):
    x, y = torch.rand(5, 6).round(), torch.tensor([0, 1, 2, 2, 1])
    m2.alpha = 0.0
    pyro.set_rng_seed(0)
    plain = evaluate_elbo(m2, {"x": x, "y": y}, num_particles=2000)
    m2.alpha = 100.0
    pyro.set_rng_seed(0)
    assert evaluate_elbo(m2, {"x": x, "y": y}, num_particles=2000) == pytest.approx(plain)
    # the unlabelled bound is the label summed out of the labelled ones (up to Monte Carlo)
    unlabelled = evaluate_elbo(m2, x, num_particles=4000, per_example=True)
    per_label = torch.stack(
        [
            evaluate_elbo(
                m2, {"x": x, "y": torch.full((5,), k)}, num_particles=4000, per_example=True
            )
            for k in range(C)
        ]
    )
    q = m2.logits(x).softmax(-1).double().detach()
    expected = (q.T * per_label).sum(0) - (q * q.log()).sum(-1)
    assert torch.allclose(unlabelled, expected, atol=0.05)


def test_fit_trains_on_alternating_labelled_and_unlabelled_batches(m2):
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0] * 6, [0.0] * 6, [1, 0, 1, 0, 1, 0.0]])
    y_all = torch.randint(0, C, (300,), generator=g)
    x_all = torch.bernoulli(0.05 + 0.9 * centres[y_all], generator=g)
    # six passes over the six labels an epoch: a labelled batch after each unlabelled one
    batches = semi_supervised_batches(
        x_all[:6], y_all[:6], x_all[6:], batch_size=50, labelled_passes=6, generator=g
    )
    before = (m2.classify(x_all) == y_all).float().mean()
    fit(
        m2,
        batches,
        # labelled batches have no site to enumerate: expected, so no warning
        loss=TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False),
        epochs=15,
        progress=False,
        optim=pyro.optim.Adam({"lr": 1e-2}),
    )
    after = (m2.classify(x_all) == y_all).float().mean()
    assert after > 0.95 > before


def test_batches_take_the_names_of_a_users_model():
    """A model written as Pyro's SS-VAE example, model(xs, ys=None), with one-hot labels:
    the batches were always {"x", "y"}, which fit refused for it."""
    enc_y, enc_z, dec = torch.nn.Linear(4, 2), torch.nn.Linear(6, 4), torch.nn.Linear(4, 4)

    def model(xs, ys=None):
        pyro.module("dec", dec)
        with pyro.plate("data", xs.shape[0]):
            zs = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            ys = pyro.sample("y", dist.OneHotCategorical(torch.ones(2) / 2), obs=ys)
            shape = torch.broadcast_shapes(zs.shape[:-1], ys.shape[:-1])
            h = torch.cat([zs.expand(*shape, 2), ys.expand(*shape, 2)], -1)
            pyro.sample("x", dist.Bernoulli(logits=dec(h)).to_event(1), obs=xs)

    def guide(xs, ys=None):
        pyro.module("enc_y", enc_y)
        pyro.module("enc_z", enc_z)
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(logits=enc_y(xs)),
                                 infer={"enumerate": "parallel"})  # fmt: skip
            shape = torch.broadcast_shapes(xs.shape[:-1], ys.shape[:-1])
            h = enc_z(torch.cat([xs.expand(*shape, 4), ys.expand(*shape, 2)], -1))
            pyro.sample("z", dist.Normal(h[..., :2], h[..., 2:].exp()).to_event(1))

    x_l, y_l = torch.rand(6, 4).round(), F.one_hot(torch.arange(6) % 2, 2).float()
    batches = semi_supervised_batches(x_l, y_l, torch.rand(30, 4).round(), batch_size=10,
                                      names=("xs", "ys"))  # fmt: skip
    assert {frozenset(b) for b in batches()} == {frozenset({"xs"}), frozenset({"xs", "ys"})}
    loss = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    result = fit(model, batches, guide=guide, loss=loss, epochs=2, progress=False)
    assert result.step == 2 * 4  # 3 unlabelled batches and 1 labelled one an epoch
    with pytest.raises(ValueError, match="names must be two different keyword argument names"):
        semi_supervised_batches(x_l, y_l, x_l, names=("xs", "xs"))


@pytest.mark.parametrize("passes", [1, 2.5, 12])
def test_batches_see_the_labelled_examples_passes_times_spread_evenly(passes):
    x_l, y_l = torch.arange(10.0)[:, None], torch.arange(10) % 3
    x_u = 100 + torch.arange(97.0)[:, None]
    epoch = list(
        semi_supervised_batches(
            x_l,
            y_l,
            x_u,
            batch_size=10,
            labelled_batch_size=4,
            labelled_passes=passes,
            generator=torch.Generator().manual_seed(0),
        )()
    )
    unlabelled = [b for b in epoch if "y" not in b]
    labelled = [b for b in epoch if "y" in b]
    # every unlabelled example once; round(passes * 3) labelled batches of the 3 per pass
    assert (
        sorted(torch.cat([b["x"] for b in unlabelled]).flatten().tolist()) == x_u.flatten().tolist()
    )
    assert len(labelled) == round(passes * 3)
    seen = torch.cat([b["x"] for b in labelled]).flatten().long()
    for b in labelled:  # labels travel with their examples
        assert torch.equal(b["y"], b["x"].flatten().long() % 3)
    whole_passes = len(labelled) // 3  # each full pass shows every labelled example once
    assert torch.equal(
        torch.bincount(seen[: whole_passes * 10], minlength=10), torch.full((10,), whole_passes)
    )
    # spread: between two labelled batches at most ceil(10 / len(labelled)) unlabelled ones
    gaps, run = [], 0
    for b in epoch:
        if "y" in b:
            gaps.append(run)
            run = 0
        else:
            run += 1
    assert max(gaps) <= -(-10 // len(labelled)) and "y" in epoch[-1]
    with pytest.raises(ValueError, match="labelled_passes must be positive, got 0"):
        semi_supervised_batches(x_l, y_l, x_u, labelled_passes=0)


def test_bad_labels_get_one_clear_error(m2):
    x = torch.rand(3, 6).round()
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    with pytest.raises(
        ValueError, match=r"labels y must lie in 0..2 \(num_classes=3\), got values in 0..3"
    ):
        elbo.loss(m2.model, m2.guide, x, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="labels y must lie in 0..2"):
        m2.guide(x, torch.tensor([-1, 1, 2]))
    with pytest.raises(TypeError, match="integer class labels"):
        m2.model(x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"one label per example, shape \(3,\)"):
        m2.model(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        SSVAE((6,), num_classes=1)


def test_init_scale_draws_the_hidden_layers_small_and_keeps_the_output_layers():
    torch.manual_seed(0)
    default = dict(SSVAE((100,), num_classes=4, z_dim=3, hidden_dims=(60,)).named_parameters())
    torch.manual_seed(0)
    small = SSVAE((100,), num_classes=4, z_dim=3, hidden_dims=(60,), init_scale=1e-3)
    hidden = {"classifier.0", "encoder.trunk.0", "decoder.net.0"}
    seen = set()
    for name, p in small.named_parameters():
        layer = name.rsplit(".", 1)[0]
        if layer in hidden:  # N(0, 0.001) draws: sample std within ~3 standard errors
            seen.add(layer)
            assert abs(p.std().item() - 1e-3) < 3e-4, name
        else:  # the same draws as PyTorch's initialization with the same seed
            assert torch.equal(p, default[name]), name
    assert seen == hidden
    with pytest.raises(ValueError, match="init_scale must be positive or None, got 0.0"):
        SSVAE((6,), init_scale=0.0)
