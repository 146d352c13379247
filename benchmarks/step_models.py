"""The models and helpers the step-time benchmarks share: the MNIST VAE written by hand in
PyTorch (``TorchVAE``) and as a Pyro model/guide pair (``PyroVAE``), the 2-D RealNVP, the
time-plate DDPM with its loss written by hand, a device sync and a hardware line.

Used by ``step_time.py``, ``guard_cost.py``, ``epoch_overhead.py`` and the smaller
benchmarks that time one of these models.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import subprocess
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class TorchVAE(nn.Module):
    """The VAE as one would write it by hand: the same networks and Monte Carlo ELBO."""

    def __init__(self, x_dim: int = 784, hidden: int = 400, z_dim: int = 50) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(x_dim, hidden), nn.Softplus())
        self.loc, self.log_scale = nn.Linear(hidden, z_dim), nn.Linear(hidden, z_dim)
        self.dec = nn.Sequential(nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, x_dim))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(x)
        loc, log_scale = self.loc(h), self.log_scale(h)
        eps = torch.randn_like(loc)
        z = loc + log_scale.exp() * eps
        log_px = -F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="none").sum(-1)
        log_pz = (-0.5 * z**2 - HALF_LOG_2PI).sum(-1)
        log_qz = (-0.5 * eps**2 - log_scale - HALF_LOG_2PI).sum(-1)
        return -(log_px + log_pz - log_qz).sum()


class PyroVAE(TorchVAE):
    """The same networks as a Pyro model/guide pair."""

    def __init__(self, name: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.name = name

    def model(self, x: torch.Tensor) -> None:
        pyro.module(self.name + ".dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z_dim = self.loc.out_features
            prior = dist.Normal(x.new_zeros(z_dim), x.new_ones(z_dim)).to_event(1)
            z = pyro.sample("z", prior)
            lik = dist.Bernoulli(logits=self.dec(z), validate_args=False).to_event(1)
            pyro.sample("x", lik, obs=x)

    def guide(self, x: torch.Tensor) -> None:
        for part in ("enc", "loc", "log_scale"):
            pyro.module(f"{self.name}.{part}", getattr(self, part))
        with pyro.plate("data", x.shape[0]):
            h = self.enc(x)
            pyro.sample("z", dist.Normal(self.loc(h), self.log_scale(h).exp()).to_event(1))


def realnvp(name: str, dim: int = 2, layers: int = 4, hidden: int = 64) -> nn.Module:
    """RealNVP from pyro_gen.flows when it exists, else from pyro_gen.transforms couplings."""
    try:
        from pyro_gen.flows import RealNVP  # type: ignore[attr-defined]

        return RealNVP((dim,), num_layers=layers, hidden_dims=(hidden, hidden), name=name)
    except (ImportError, TypeError):
        from pyro_gen.flows.base import FlowModel
        from pyro_gen.transforms import affine_coupling

        ts = [
            affine_coupling(dim, parity=i % 2, hidden_dims=(hidden, hidden)) for i in range(layers)
        ]
        return FlowModel((dim,), ts, name=name)


def ddpm(name: str, dim: int = 2, timesteps: int = 1000) -> nn.Module:
    """The time-plate DDPM with L_simple and fixed variances: the form hand-written code uses."""
    from pyro_gen.diffusion import build_ddpm

    gen = build_ddpm((dim,), objective="simple", variance="fixed_small", timesteps=timesteps)
    gen.name = name
    return gen


def ddpm_loss(gen: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same DDPM's loss written by hand: T x L_simple at one uniform step per example
    (the time plate's estimate) plus the closed-form KL(q(x_T | x_0) || N(0, I))."""
    s, T = gen.schedule, gen.schedule.num_timesteps

    def loss(x: torch.Tensor) -> torch.Tensor:
        t = torch.randint(1, T + 1, (x.shape[0],), device=x.device)
        eps = torch.randn_like(x)
        ab = s.alphas_cumprod[t - 1].unsqueeze(-1)
        x_t = ab.sqrt() * x + (1 - ab).sqrt() * eps
        simple = 0.5 * (gen.net(x_t, t) - eps).pow(2).sum(-1) * T
        ab_T = s.alphas_cumprod[-1]
        kl_T = 0.5 * (ab_T * x.pow(2) - ab_T - (1 - ab_T).log()).sum(-1)
        return (simple + kl_T).sum()

    return loss


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    return f"{name}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}"
