"""ProdLDA as in Pyro's "prodlda" tutorial: amortized LDA with a logistic-normal
document-topic latent (the Laplace approximation of a Dirichlet prior), an encoder guide and
a product-of-experts decoder, words observed as one multinomial bag per document whose total
count varies from document to document:

.. math::

    \\log\\theta_d \\sim \\mathcal{N}(0, I_K),\\quad
    w_d \\sim \\operatorname{Multinomial}\\big(n_d,
        \\operatorname{softmax}(\\operatorname{BN}(\\beta\\,\\operatorname{softmax}(\\log\\theta_d)))\\big).

:func:`ProdLDA.model` takes a minibatch of documents, as the tutorial's loop does;
:func:`ProdLDA.subsampled_model` takes the whole corpus and subsamples it itself with
``pyro.plate("documents", N, subsample_size=B)``, as the LDA example does.

References:
    Srivastava & Sutton, "Autoencoding Variational Inference for Topic Models",
    arXiv:1703.01488.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

VOCAB, TOPICS = 24, 3


def corpus(num_docs: int = 64, seed: int = 0) -> torch.Tensor:
    """Bag-of-words counts ``(num_docs, VOCAB)`` from an LDA with three topics, each on its
    own third of the vocabulary; documents have between 8 and 40 words."""
    g = torch.Generator().manual_seed(seed)
    topics = torch.full((TOPICS, VOCAB), 0.01)
    for k in range(TOPICS):
        topics[k, k * VOCAB // TOPICS : (k + 1) * VOCAB // TOPICS] = 1.0
    topics = topics / topics.sum(-1, keepdim=True)
    with torch.random.fork_rng():  # the draw leaves the caller's RNG where it was
        torch.manual_seed(seed)
        theta = torch.distributions.Dirichlet(torch.full((TOPICS,), 0.3)).sample((num_docs,))
    lengths = torch.randint(8, 41, (num_docs,), generator=g)
    docs = torch.zeros(num_docs, VOCAB)
    for d in range(num_docs):
        words = torch.multinomial(theta[d] @ topics, int(lengths[d]), True, generator=g)
        docs[d] = torch.bincount(words, minlength=VOCAB).float()
    return docs


class Encoder(nn.Module):
    """Counts to the loc and scale of ``logtheta`` (batch norm without affine parameters and
    dropout, which the tutorial uses against component collapse)."""

    def __init__(self, hidden: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(VOCAB, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fcmu = nn.Linear(hidden, TOPICS)
        self.fclv = nn.Linear(hidden, TOPICS)
        self.bnmu = nn.BatchNorm1d(TOPICS, affine=False)
        self.bnlv = nn.BatchNorm1d(TOPICS, affine=False)

    def forward(self, docs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.drop(F.softplus(self.fc2(F.softplus(self.fc1(docs)))))
        loc = self.bnmu(self.fcmu(h))
        log_var = self.bnlv(self.fclv(h))
        return loc, (0.5 * log_var).exp()


class Decoder(nn.Module):
    """Topic proportions to word probabilities: one linear map (the topics, unnormalized),
    batch norm, softmax."""

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        self.beta = nn.Linear(TOPICS, VOCAB, bias=False)
        self.bn = nn.BatchNorm1d(VOCAB, affine=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        h = self.drop(theta)
        shape = h.shape
        # BatchNorm1d takes (batch, features): extra leading dims (particles) are flattened.
        out = self.bn(self.beta(h).reshape(-1, VOCAB)).reshape(*shape[:-1], VOCAB)
        return F.softmax(out, -1)


class ProdLDA(nn.Module):
    """The tutorial's model and guide; ``dropout=0`` makes every network deterministic."""

    def __init__(self, hidden: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        self.encoder = Encoder(hidden, dropout)
        self.decoder = Decoder(dropout)

    def _documents(self, docs: torch.Tensor) -> None:
        logtheta_loc = docs.new_zeros((docs.shape[0], TOPICS))
        logtheta = pyro.sample(
            "logtheta", dist.Normal(logtheta_loc, torch.ones_like(logtheta_loc)).to_event(1)
        )
        theta = F.softmax(logtheta, -1)
        count_param = self.decoder(theta)
        # The counts' log-probability does not depend on total_count (torch reads each
        # document's own sum); it only has to bound every document's length.
        total_count = int(docs.sum(-1).max())
        pyro.sample("obs", dist.Multinomial(total_count, count_param), obs=docs)

    def model(self, docs: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("documents", docs.shape[0]):
            self._documents(docs)

    def guide(self, docs: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("documents", docs.shape[0]):
            loc, scale = self.encoder(docs)
            pyro.sample("logtheta", dist.Normal(loc, scale).to_event(1))

    def subsampled_model(self, docs: torch.Tensor, batch_size: int = 16) -> None:
        """The whole corpus in, a random minibatch of documents scored with weight N/B."""
        pyro.module("decoder", self.decoder)
        with pyro.plate("documents", docs.shape[0], subsample_size=batch_size) as idx:
            self._documents(docs[idx])

    def subsampled_guide(self, docs: torch.Tensor, batch_size: int = 16) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("documents", docs.shape[0], subsample_size=batch_size) as idx:
            loc, scale = self.encoder(docs[idx])
            pyro.sample("logtheta", dist.Normal(loc, scale).to_event(1))

    def topic_words(self) -> torch.Tensor:
        """``(TOPICS, VOCAB)``: each topic's weights over words (the decoder's ``beta``)."""
        return self.decoder.beta.weight.T.detach()


class FlowGuide(nn.Module):
    """The encoder's Normal on ``logtheta`` pushed through flow layers."""

    def __init__(self, encoder: nn.Module, iafs: list[nn.Module]) -> None:
        super().__init__()
        self.encoder = encoder
        self.iafs = nn.ModuleList(iafs)

    def forward(self, docs: torch.Tensor) -> None:
        pyro.module("prodlda_flow_guide", self)
        with pyro.plate("documents", docs.shape[0]):
            loc, scale = self.encoder(docs)
            base = dist.Normal(loc, scale).to_event(1)
            pyro.sample("logtheta", dist.TransformedDistribution(base, list(self.iafs)))
