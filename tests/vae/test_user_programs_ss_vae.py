r"""A user's M2 semi-supervised VAE (Pyro's ``ss_vae_M2`` layout: ``model(xs, ys=None)``,
one-hot float labels observed on labelled batches and enumerated on the others) with
``AutoAmortizedNormal`` as the guide of ``z``.

Checked here:

- a guide built on a labelled batch reads the labels as an encoder input (they are a
  floating-point argument with a row per example), so an unlabelled batch cannot be
  encoded: the error names the labels and says to pass an ``input_fn`` of the images alone;
- with ``input_fn`` the guide's posterior of an image is the same with or without its label,
  batches come in either order, and the unlabelled batch's ``TraceEnum_ELBO`` is, by hand
  with the same guide draw, :math:`\sum_n \log \sum_c p(x_n, c, z_n) - \log q(z_n \mid x_n)`.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from pyro_gen.vae import AutoAmortizedNormal

D, Z, C = 4, 2, 3


def _m2():
    torch.manual_seed(0)
    decoder = torch.nn.Linear(Z + C, D)

    def model(xs, ys=None):
        pyro.module("decoder", decoder)
        with pyro.plate("data", xs.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([Z]).to_event(1))
            prior = dist.OneHotCategorical(torch.ones(C) / C)
            ys = pyro.sample("y", prior, obs=ys, infer={"enumerate": "parallel"})
            shape = torch.broadcast_shapes(z.shape[:-1], ys.shape[:-1])
            h = torch.cat([z.expand(shape + (Z,)), ys.expand(shape + (C,))], -1)
            pyro.sample("x", dist.Bernoulli(logits=decoder(h)).to_event(1), obs=xs)

    xs = torch.rand(4, D, generator=torch.Generator().manual_seed(1)).round()
    ys = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0]), C).float()
    return model, decoder, xs, ys


def test_labels_read_by_the_encoder_then_left_out_are_named_with_the_input_fn_to_pass():
    model, _, xs, ys = _m2()
    pyro.clear_param_store()
    guide = AutoAmortizedNormal(model, hidden_dims=(4,))
    guide(xs, ys)
    with pytest.raises(ValueError, match=r"\['ys'\] were not given.*labels.*of \['xs'\] alone"):
        guide(xs)


@pytest.mark.parametrize("labelled_first", [True, False])
def test_an_input_fn_of_the_images_encodes_both_batches_and_sums_the_label_out(labelled_first):
    model, decoder, xs, ys = _m2()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoAmortizedNormal(model, hidden_dims=(4,), input_fn=lambda xs, ys=None: xs)
    first = guide.median(xs, ys) if labelled_first else guide.median(xs)
    second = guide.median(xs) if labelled_first else guide.median(xs, ys)
    torch.testing.assert_close(first["z"], second["z"])

    pyro.set_rng_seed(2)
    unlabelled = -TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, xs)
    pyro.set_rng_seed(2)
    guide_trace = poutine.trace(guide).get_trace(xs)
    z = guide_trace.nodes["z"]["value"]
    log_q = guide_trace.nodes["z"]["fn"].log_prob(z)
    per_class = []
    for c in range(C):
        y = torch.nn.functional.one_hot(torch.full((xs.shape[0],), c), C).float()
        logits = decoder(torch.cat([z, y], -1))
        log_joint = (
            dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
            + torch.log(torch.tensor(1.0 / C))
            + dist.Bernoulli(logits=logits).log_prob(xs).sum(-1)
        )
        per_class.append(log_joint)
    expected = (torch.logsumexp(torch.stack(per_class), 0) - log_q).sum()
    assert unlabelled == pytest.approx(expected.item(), rel=1e-5)
