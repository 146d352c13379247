"""A small deep Markov model over variable-length binary sequences, as in Pyro's
``examples/dmm.py``: padded minibatches, ``pyro.markov`` over time, ``poutine.mask`` for the
steps past each sequence's end, and an RNN guide that reads each sequence backwards from a
``PackedSequence``. The batches come from the user's own generator function.

References:
    Krishnan, Shalit, Sontag, "Structured Inference Networks for Nonlinear State Space
    Models", arXiv:1609.09869.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

X_DIM, MAX_LENGTH = 4, 7


def sequences(
    num_sequences: int = 32, min_length: int = 3, max_length: int = MAX_LENGTH, seed: int = 0
) -> list[torch.Tensor]:
    """Binary sequences of varying length from a two-state switching process."""
    g = torch.Generator().manual_seed(seed)
    emission = torch.tensor([[0.9, 0.8, 0.1, 0.2], [0.1, 0.2, 0.9, 0.7]])
    out = []
    for _ in range(num_sequences):
        length = int(torch.randint(min_length, max_length + 1, (), generator=g))
        state, rows = int(torch.randint(0, 2, (), generator=g)), []
        for _ in range(length):
            if torch.rand((), generator=g) < 0.2:
                state = 1 - state
            rows.append((torch.rand(X_DIM, generator=g) < emission[state]).float())
        out.append(torch.stack(rows))
    return out


def reverse_padded(seqs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverses each sequence within its own length, leaving the padding at the end."""
    t = torch.arange(seqs.shape[1])
    index = (lengths[:, None] - 1 - t).where(t < lengths[:, None], t)
    return seqs.gather(1, index[..., None].expand_as(seqs))


def minibatches(
    data: list[torch.Tensor], batch_size: int = 8, pad_to: int | None = None
) -> Iterator[dict[str, torch.Tensor | PackedSequence]]:
    """The user's batch generator: padded sequences, their mask and lengths, and the
    reversed sequences packed for the guide's RNN.

    Args:
        data: sequences of shape (length, X_DIM).
        batch_size: sequences per batch.
        pad_to: pad every batch to this many steps (default: the batch's longest sequence,
            so the number of time steps, hence the model's sample sites, varies by batch).
    """
    for i in range(0, len(data), batch_size):
        chunk = data[i : i + batch_size]
        lengths = torch.tensor([len(s) for s in chunk])
        steps = pad_to if pad_to is not None else int(lengths.max())
        seqs = torch.zeros(len(chunk), steps, X_DIM)
        for j, s in enumerate(chunk):
            seqs[j, : len(s)] = s
        mask = torch.arange(steps) < lengths[:, None]
        packed = pack_padded_sequence(
            reverse_padded(seqs, lengths), lengths, batch_first=True, enforce_sorted=False
        )
        yield {"seqs": seqs, "mask": mask, "lengths": lengths, "reversed_seqs": packed}


class DMM(nn.Module):
    """``z_t | z_{t-1} ~ N(transition(z_{t-1}))``, ``x_t | z_t ~ Bernoulli(emitter(z_t))``."""

    def __init__(self, z_dim: int = 2, hidden_dim: int = 12) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.transition = nn.Sequential(
            nn.Linear(z_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 2 * z_dim)
        )
        self.emitter = nn.Sequential(
            nn.Linear(z_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, X_DIM)
        )
        self.z_0 = nn.Parameter(torch.zeros(z_dim))

    def model(
        self,
        seqs: torch.Tensor,
        mask: torch.Tensor,
        lengths: torch.Tensor,
        reversed_seqs: PackedSequence | None = None,
    ) -> None:
        pyro.module("dmm", self)
        z_prev = self.z_0.expand(seqs.shape[0], self.z_dim)
        with pyro.plate("sequences", seqs.shape[0]):
            for t in pyro.markov(range(seqs.shape[1])):
                loc, log_scale = self.transition(z_prev).chunk(2, -1)
                # Steps past a sequence's end are neither scored nor observed.
                with poutine.mask(mask=mask[:, t]):
                    z_t = pyro.sample(f"z_{t + 1}", dist.Normal(loc, log_scale.exp()).to_event(1))
                    logits = self.emitter(z_t)
                    pyro.sample(
                        f"x_{t + 1}", dist.Bernoulli(logits=logits).to_event(1), obs=seqs[:, t]
                    )
                z_prev = z_t


class Guide(nn.Module):
    """``q(z_t | z_{t-1}, x_{t:T})``: a GRU reads each sequence backwards and a combiner mixes
    its state with ``z_{t-1}``; with ``iafs`` the combiner's Normal is pushed through them
    (Pyro's DMM with ``--num-iafs``).
    """

    def __init__(self, z_dim: int = 2, rnn_dim: int = 12, iafs: list[nn.Module] = ()) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.rnn = nn.GRU(X_DIM, rnn_dim, batch_first=True)
        self.h_0 = nn.Parameter(torch.zeros(1, 1, rnn_dim))
        self.z_q_0 = nn.Parameter(torch.zeros(z_dim))
        self.z_to_hidden = nn.Linear(z_dim, rnn_dim)
        self.hidden_to_params = nn.Linear(rnn_dim, 2 * z_dim)
        self.iafs = nn.ModuleList(iafs)

    def forward(
        self,
        seqs: torch.Tensor,
        mask: torch.Tensor,
        lengths: torch.Tensor,
        reversed_seqs: PackedSequence,
    ) -> None:
        pyro.module("dmm_guide", self)
        batch_size, steps = seqs.shape[:2]
        h_0 = self.h_0.expand(1, batch_size, -1).contiguous()
        rnn_out, _ = self.rnn(reversed_seqs, h_0)
        rnn_out, _ = pad_packed_sequence(rnn_out, batch_first=True, total_length=steps)
        rnn_out = reverse_padded(rnn_out, lengths)  # step t summarises x_t, ..., x_T
        z_prev = self.z_q_0.expand(batch_size, self.z_dim)
        with pyro.plate("sequences", batch_size):
            for t in pyro.markov(range(steps)):
                h = 0.5 * (torch.tanh(self.z_to_hidden(z_prev)) + rnn_out[:, t])
                loc, log_scale = self.hidden_to_params(h).chunk(2, -1)
                z_dist = dist.Normal(loc, log_scale.exp()).to_event(1)
                if self.iafs:
                    z_dist = dist.TransformedDistribution(z_dist, list(self.iafs))
                with poutine.mask(mask=mask[:, t]):
                    z_prev = pyro.sample(f"z_{t + 1}", z_dist)
