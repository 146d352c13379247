"""The probability-flow decoder bound on scalar data (event shape ``()``) and on data with an
extra leading batch dim, ``(groups, batch, *event_shape)``, as the log-density and the
dequantized bits/dim take them: its decoder term summed ``flatten(1)``, which failed on scalars
("Dimension out of range") and folded the second batch dim into the first. Each result now
equals that of the same data as vectors of one / as one flat batch, on the same draws, and the
decoder term is VDM's closed form, :math:`-\\log \\operatorname{softmax}_k` of
:math:`-\\tfrac12((z - \\alpha v_k)/\\sigma)^2` at the data's level."""

from __future__ import annotations

import torch

from pyro_gen.diffusion import VPSDE, probability_flow_decoder_bound


class StandardNormal:
    """Data N(0, I): the score is -x at every time."""

    sde, eps = VPSDE(), 1e-3

    def __init__(self, event_shape: tuple[int, ...]) -> None:
        self.event_shape = event_shape

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -x


def bound(event_shape, x):
    return probability_flow_decoder_bound(
        StandardNormal(event_shape), x, num_bins=8, rtol=1e-4, atol=1e-4,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip


def test_scalar_data_get_the_bound_of_vectors_of_one_with_the_closed_form_decoder():
    x = torch.tensor([0.0, 3.0, 7.0])
    scalar, vector = bound((), x), bound((1,), x[:, None])
    for key in vector:
        assert scalar[key].shape == (3,)
        assert torch.allclose(scalar[key], vector[key], atol=1e-6), key
    # the decoder by hand: the same draw z of the first noisy latent, then the levels' softmax
    alpha, sigma = (float(v) for v in VPSDE().marginal(torch.tensor(1e-3, dtype=torch.float64)))
    grid = torch.linspace(-1.0, 1.0, 8)
    z = alpha * grid[x.long()] + sigma * torch.randn(3, generator=torch.Generator().manual_seed(0))
    logits = -0.5 * ((z[:, None] - alpha * grid) / sigma) ** 2
    exact = -logits.log_softmax(-1).gather(-1, x.long()[:, None])[:, 0]
    assert torch.allclose(scalar["decoder"], exact, atol=1e-5)


def test_stacked_batches_get_one_bound_per_example():
    x = torch.randint(0, 8, (3, 4, 2)).float()
    stacked, flat = bound((2,), x), bound((2,), x.reshape(12, 2))
    for key in flat:
        assert stacked[key].shape == (3, 4), key
        assert torch.allclose(stacked[key].reshape(12), flat[key], atol=1e-5), key
