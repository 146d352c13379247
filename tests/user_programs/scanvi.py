"""A small scANVI (single-cell annotation), written as Pyro's ``examples/scanvi`` writes it:
each cell's gene counts are zero-inflated negative binomial given a library size ``l`` and a
cell state ``z2``, which in turn depends on a cell type ``y`` (one-hot, observed for a few
labelled cells, enumerated by ``TraceEnum_ELBO`` for the rest) and a type-free latent
``z1``:

.. math::

    z_1 \\sim \\mathcal{N}(0, I),\\ y \\sim \\operatorname{Cat}(1/C),\\
    z_2 \\sim \\mathcal{N}(\\mu(z_1, y), \\sigma(z_1, y)),\\
    l \\sim \\operatorname{LogNormal}(l_0, s_0),\\
    x_g \\sim \\operatorname{ZINB}(\\pi_g(z_2), \\theta_g, l\\,\\rho_g(z_2)).

The model and guide take the whole data set and subsample it themselves
(``pyro.plate("cells", N, subsample_size=B)``, scaled by ``N/B``), as Pyro's LDA example
does; ``batch_size=None`` scores every cell. The classifier ``q(y | x)`` also learns from
the labels directly through an auxiliary term scaled by ``poutine.scale`` (the
``alpha`` of scANVI).

References:
    Xu, Lopez, Mehlman, Regier, Jordan, Yosef, "Harmonization and Annotation of
    Single-cell Transcriptomics data with Deep Generative Models", bioRxiv 532895.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from torch import nn
from torch.nn import functional as F

GENES, TYPES, LATENT = 12, 3, 2
#: Prior of the log library size (the data's mean and spread, as the example computes them).
L_LOC, L_SCALE = 4.0, 0.3


def cells(
    num_labelled: int = 24, num_unlabelled: int = 96, num_test: int = 48, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Counts ``(n, GENES)`` of cells of three types, each type expressing its own genes;
    library sizes around ``exp(L_LOC)`` and 10% dropouts."""
    g = torch.Generator().manual_seed(seed)
    profiles = F.softmax(3.0 * torch.randn(TYPES, GENES, generator=g), -1)
    n = num_labelled + num_unlabelled + num_test
    types = torch.randint(0, TYPES, (n,), generator=g)
    library = (L_LOC + L_SCALE * torch.randn(n, 1, generator=g)).exp()
    with torch.random.fork_rng():  # the draw leaves the caller's RNG where it was
        torch.manual_seed(seed)
        theta = torch.full((GENES,), 5.0)
        logits = (library * profiles[types]).log() - theta.log()
        x = dist.ZeroInflatedNegativeBinomial(theta, logits=logits, gate=torch.tensor(0.1))
        counts = x.sample()
    labels = F.one_hot(types, TYPES).float()
    a, b = num_labelled, num_labelled + num_unlabelled
    return {
        "x_sup": counts[:a],
        "y_sup": labels[:a],
        "x_unsup": counts[a:b],
        "x_test": counts[b:],
        "y_test": labels[b:],
    }


def epoch(data: dict[str, torch.Tensor], steps: int = 3, batch_size: int = 8):
    """One epoch as the user writes it: ``steps`` times a labelled then an unlabelled
    minibatch, each drawn by the model's own subsampled plate from its whole set."""
    for _ in range(steps):
        yield {"x": data["x_sup"], "y": data["y_sup"], "batch_size": batch_size}
        yield {"x": data["x_unsup"], "batch_size": batch_size}


def mlp(*dims: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(dims, dims[1:]):
        layers += [nn.Linear(a, b), nn.Softplus()]
    return nn.Sequential(*layers[:-1])


def _cat(*tensors: torch.Tensor) -> torch.Tensor:
    # Enumeration gives y leading dims that z lacks (and particles the reverse).
    lead = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*lead, t.shape[-1]) for t in tensors], -1)


class SCANVI(nn.Module):
    """Networks, model and the example's guide; ``alpha`` weighs the classifier's loss."""

    def __init__(self, hidden: int = 24, alpha: float = 10.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.z2_decoder = mlp(LATENT + TYPES, hidden, 2 * LATENT)
        self.x_decoder = mlp(LATENT, hidden, 2 * GENES)
        self.z2l_encoder = mlp(GENES, hidden, 2 * LATENT + 2)
        self.z1_encoder = mlp(LATENT + TYPES, hidden, 2 * LATENT)
        self.classifier = mlp(GENES, hidden, TYPES)

    def model(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        batch_size: int | None = None,
        annealing_factor: float = 1.0,
    ) -> None:
        """``annealing_factor`` scales the latents' terms, KL annealing as Pyro's DMM
        example writes it by hand (an observed label is data and keeps its weight)."""
        pyro.module("scanvi", self)
        theta = pyro.param(
            "inverse_dispersion", 10.0 * x.new_ones(GENES), constraint=constraints.positive
        )
        with pyro.plate("cells", x.shape[0], subsample_size=batch_size) as idx:
            x = x[idx]
            y = None if y is None else y[idx]
            n = x.shape[0]
            with poutine.scale(scale=annealing_factor):
                z1 = pyro.sample("z1", dist.Normal(x.new_zeros(n, LATENT), 1.0).to_event(1))
            prior = dist.OneHotCategorical(logits=x.new_zeros(n, TYPES))
            with poutine.scale(scale=annealing_factor if y is None else 1.0):
                y_ = pyro.sample("y", prior, obs=y)
            with poutine.scale(scale=annealing_factor):
                loc, scale = self.z2_decoder(_cat(z1, y_)).chunk(2, -1)
                z2 = pyro.sample("z2", dist.Normal(loc, F.softplus(scale)).to_event(1))
                l_loc = x.new_full((n, 1), L_LOC)
                library = pyro.sample("l", dist.LogNormal(l_loc, L_SCALE).to_event(1))
            gate_logits, rho = self.x_decoder(z2).chunk(2, -1)
            nb_logits = (library * F.softmax(rho, -1) + 5e-3).log() - (theta + 5e-3).log()
            counts = dist.ZeroInflatedNegativeBinomial(
                theta, logits=nb_logits, gate_logits=gate_logits
            )
            pyro.sample("x", counts.to_event(1), obs=x)
            if y is not None:
                with poutine.scale(scale=self.alpha):
                    logits = self.classifier(x.log1p())
                    pyro.sample("y_aux", dist.OneHotCategorical(logits=logits), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None, batch_size=None) -> None:
        """The example's guide: ``q(l, z2 | x) q(y | x) q(z1 | z2, y)``; ``y`` is sampled
        where unobserved, enumerated under ``config_enumerate``."""
        pyro.module("scanvi", self)
        with pyro.plate("cells", x.shape[0], subsample_size=batch_size) as idx:
            x = x[idx]
            z2_loc, z2_scale, l_loc, l_scale = self.z2l_encoder(x.log1p()).split(
                [LATENT, LATENT, 1, 1], -1
            )
            pyro.sample("l", dist.LogNormal(l_loc, F.softplus(l_scale)).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(z2_loc, F.softplus(z2_scale)).to_event(1))
            if y is None:
                logits = self.classifier(x.log1p())
                y = pyro.sample("y", dist.OneHotCategorical(logits=logits))
            else:
                y = y[idx]
            loc, scale = self.z1_encoder(_cat(z2, y)).chunk(2, -1)
            pyro.sample("z1", dist.Normal(loc, F.softplus(scale)).to_event(1))

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Fraction of cells whose most probable type under the classifier is ``y``'s."""
        return (self.classifier(x.log1p()).argmax(-1) == y.argmax(-1)).float().mean().item()
