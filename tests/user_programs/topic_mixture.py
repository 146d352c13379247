"""Documents as columns of word ids with one topic per word, summed out by enumeration
inside a ``words`` plate nested in the ``documents`` plate, the layout of Pyro's LDA
example, but with two topics and fixed topic-word tables so that each document's evidence
has a closed form (a one-dimensional integral over its topic mix):

.. math::

    \\theta_d \\sim \\operatorname{Dirichlet}(\\alpha),\\quad
    t_{nd} \\sim \\operatorname{Categorical}(\\theta_d),\\quad
    x_{nd} \\sim \\operatorname{Categorical}(\\phi_{t_{nd}}),\\qquad
    p(x_d \\mid \\theta_d) = \\prod_n \\sum_k \\theta_{dk}\\,\\phi_{k, x_{nd}}.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from torch.nn import functional as F

VOCAB, WORDS_PER_DOC = 6, 8
ALPHA = torch.tensor([0.7, 0.7], dtype=torch.float64)
# topic 0 favours the first half of the vocabulary, topic 1 the second
PHI = torch.tensor(
    [[0.3, 0.3, 0.3, 0.04, 0.03, 0.03], [0.03, 0.03, 0.04, 0.3, 0.3, 0.3]], dtype=torch.float64
)


def corpus(num_docs: int = 6, seed: int = 0) -> torch.Tensor:
    """Word ids ``(WORDS_PER_DOC, num_docs)`` drawn from the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        theta = torch.distributions.Beta(ALPHA[0], ALPHA[1]).sample((num_docs,))
    mix = torch.stack([theta, 1 - theta], -1)
    topics = torch.multinomial(mix, WORDS_PER_DOC, True, generator=g)
    words = torch.multinomial(PHI[topics.reshape(-1)], 1, generator=g)
    return words.reshape(num_docs, WORDS_PER_DOC).T.contiguous()


def _words(data: torch.Tensor, theta: torch.Tensor) -> None:
    with pyro.plate("words", WORDS_PER_DOC, dim=-2):
        topic = pyro.sample("topic", dist.Categorical(theta), infer={"enumerate": "parallel"})
        pyro.sample("word", dist.Categorical(Vindex(PHI)[topic]), obs=data)


def model(data: torch.Tensor) -> None:
    """The topic mix of each document is latent."""
    with pyro.plate("documents", data.shape[1], dim=-1):
        theta = pyro.sample("theta", dist.Dirichlet(ALPHA))
        _words(data, theta)


def model_given_mix(data: torch.Tensor, theta: torch.Tensor) -> None:
    """The topic mixes ``(documents, 2)`` are given: only the word topics are latent."""
    with pyro.plate("documents", data.shape[1], dim=-1):
        _words(data, theta)


def guide(data: torch.Tensor, concentration: float = 2.0) -> None:
    """A fixed Dirichlet proposal for every document's mix."""
    with pyro.plate("documents", data.shape[1], dim=-1):
        pyro.sample("theta", dist.Dirichlet(torch.full((2,), concentration, dtype=PHI.dtype)))


def log_likelihood_given_mix(data: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Each document's ``log p(x_d | theta_d)``."""
    per_word = theta[None, :, 0] * PHI[0, data] + theta[None, :, 1] * PHI[1, data]
    return per_word.log().sum(0)


def exact_log_likelihood(data: torch.Tensor, num_points: int = 4001) -> torch.Tensor:
    """Each document's ``log p(x_d)``: the mix integrated out by the trapezoid rule in
    logit space (``theta = sigmoid(s)``), where the Beta prior's edges are smooth."""
    s = torch.linspace(-40.0, 40.0, num_points, dtype=torch.float64)
    log_theta, log_rest = F.logsigmoid(s), F.logsigmoid(-s)
    # Beta(theta | a, b) dtheta/ds = theta^a (1 - theta)^b / B(a, b)
    log_beta = torch.lgamma(ALPHA).sum() - torch.lgamma(ALPHA.sum())
    log_prior = ALPHA[0] * log_theta + ALPHA[1] * log_rest - log_beta
    mixes = torch.stack([log_theta.exp(), log_rest.exp()], -1)  # (points, 2)
    log_f = torch.stack([log_likelihood_given_mix(data, m.expand(data.shape[1], 2)) for m in mixes])
    log_f = log_f + log_prior[:, None]  # (points, documents)
    weights = torch.full_like(s, (s[1] - s[0]).item())
    weights[[0, -1]] /= 2
    return torch.logsumexp(log_f + weights.log()[:, None], 0)
