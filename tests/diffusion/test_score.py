"""On Gaussian data the score of every forward marginal is known; a briefly trained network's
score (converted from its eps prediction) must match it."""

from __future__ import annotations

import pyro
import torch
from pyro.infer import SVI, TraceMeanField_ELBO

from pyro_gen.diffusion import DDPM, NoiseSchedule, convert, linear_betas
from pyro_gen.nn.time_embedding import TimeMLP

torch.set_num_threads(1)


def test_trained_score_matches_true_score():
    torch.manual_seed(0)
    mu = torch.tensor([1.0, -0.5])
    chol = torch.tensor([[0.6, 0.0], [0.3, 0.4]])
    cov = chol @ chol.T
    data = mu + torch.randn(4096, 2) @ chol.T
    m = DDPM(TimeMLP(2, 64, num_layers=2), (2,), NoiseSchedule(linear_betas(20, 0.01, 0.3)),
             objective="simple", time_samples=4)  # fmt: skip
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 3e-3}), TraceMeanField_ELBO())
    for _ in range(600):
        svi.step(data[torch.randint(0, 4096, (256,))])
    s = m.schedule
    for t in (4, 10, 18):
        ab = s.alphas_cumprod[t - 1]
        cov_t = ab * cov + (1 - ab) * torch.eye(2)
        x_t = ab.sqrt() * mu + torch.randn(2000, 2) @ torch.linalg.cholesky(cov_t).T
        true = -(x_t - ab.sqrt() * mu) @ torch.linalg.inv(cov_t)
        with torch.no_grad():
            pred = m.predict(x_t, torch.full((2000,), t))[0]
        learned = convert(pred, "eps", "score", x_t, ab)
        rel = (learned - true).norm(dim=-1).mean() / true.norm(dim=-1).mean()
        assert rel < 0.15, (t, float(rel))
