"""Amortized latent Dirichlet allocation as Pyro's ``examples/lda.py`` writes it: documents
as columns of word ids, each word's topic a discrete latent that ``TraceEnum_ELBO`` sums out
(``infer={"enumerate": "parallel"}``) under nested ``documents`` and ``words`` plates,
global topics with a conjugate guide and each document's topic mix from an inference
network. The guide subsamples documents (``pyro.plate("documents", D, subsample_size=B)``)
and the model, which opens the full plate, replays its indices:

.. math::

    \\alpha_k \\sim \\operatorname{Gamma}(1/K, 1),\\quad
    \\beta_k \\sim \\operatorname{Dirichlet}(\\mathbf{1}/V),\\quad
    \\theta_d \\sim \\operatorname{Dirichlet}(\\alpha),\\quad
    w_{dn} \\sim \\textstyle\\sum_k \\theta_{dk}\\,\\operatorname{Cat}(\\beta_k).

The example's guide puts a point mass on ``theta_d``; :func:`dirichlet_guide` gives it an
amortized Dirichlet instead, so that the ELBO and the IWAE bound are defined.

References:
    Srivastava & Sutton, "Autoencoding Variational Inference for Topic Models",
    arXiv:1703.01488.
    Jankowiak & Obermeyer, "Pathwise Derivatives Beyond the Reparameterization Trick",
    arXiv:1806.01851.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn
from torch.nn import functional as F

TOPICS, VOCAB, DOCS, WORDS = 3, 12, 32, 16


def model(data: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
    """``data``: word ids ``(WORDS, DOCS)``; with ``data=None`` the model draws a corpus."""
    with pyro.plate("topics", TOPICS):
        topic_weights = pyro.sample("topic_weights", dist.Gamma(1.0 / TOPICS, 1.0))
        topic_words = pyro.sample("topic_words", dist.Dirichlet(torch.ones(VOCAB) / VOCAB))
    with pyro.plate("documents", DOCS) as ind:
        if data is not None:
            data = data[:, ind]
        doc_topics = pyro.sample("doc_topics", dist.Dirichlet(topic_weights))
        with pyro.plate("words", WORDS):
            word_topics = pyro.sample(
                "word_topics", dist.Categorical(doc_topics), infer={"enumerate": "parallel"}
            )
            data = pyro.sample("doc_words", dist.Categorical(topic_words[word_topics]), obs=data)
    return data


def corpus(seed: int = 0) -> torch.Tensor:
    """Word ids ``(WORDS, DOCS)`` drawn from the model itself, as the example does."""
    with torch.random.fork_rng():
        pyro.set_rng_seed(seed)
        return model().detach()


def predictor(hidden: int = 16) -> nn.Sequential:
    """Word counts to topic proportions; small initial weights, as the example's."""
    layers = [nn.Linear(VOCAB, hidden), nn.Sigmoid(), nn.Linear(hidden, TOPICS)]
    for layer in layers[::2]:
        nn.init.normal_(layer.weight, 0.0, 0.001)
        nn.init.normal_(layer.bias, 0.0, 0.001)
    return nn.Sequential(*layers, nn.Softmax(-1))


def _counts(data: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """Each subsampled document's histogram of word ids, ``(len(ind), VOCAB)``."""
    words = data[:, ind]
    counts = torch.zeros(VOCAB, ind.shape[0]).scatter_add(0, words, torch.ones(words.shape))
    return counts.T


def _global_guide() -> None:
    # The example's conjugate guide for the topics.
    weights = pyro.param(
        "topic_weights_posterior", lambda: torch.ones(TOPICS), constraint=constraints.positive
    )
    words = pyro.param(
        "topic_words_posterior",
        lambda: torch.ones(TOPICS, VOCAB),
        constraint=constraints.greater_than(0.5),
    )
    with pyro.plate("topics", TOPICS):
        pyro.sample("topic_weights", dist.Gamma(weights, 1.0))
        pyro.sample("topic_words", dist.Dirichlet(words))


def parametrized_guide(net: nn.Module, data: torch.Tensor, batch_size: int | None = None):
    """The example's guide (``functools.partial(parametrized_guide, net)``): a point mass
    at the network's topic proportions for each subsampled document."""
    _global_guide()
    pyro.module("predictor", net)
    with pyro.plate("documents", DOCS, batch_size) as ind:
        pyro.sample("doc_topics", dist.Delta(net(_counts(data, ind)), event_dim=1))


class DirichletGuide(nn.Module):
    """The same guide with an amortized Dirichlet on each document's topic mix."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(VOCAB, hidden), nn.Softplus(), nn.Linear(hidden, TOPICS))

    def forward(self, data: torch.Tensor, batch_size: int | None = None) -> None:
        _global_guide()
        pyro.module("dirichlet_guide", self)
        with pyro.plate("documents", DOCS, batch_size) as ind:
            concentration = F.softplus(self.net(_counts(data, ind).log1p())) + 0.1
            pyro.sample("doc_topics", dist.Dirichlet(concentration))
