"""Training and evaluation for every pyro_gen model: one SVI loop, annealing, evaluation."""

from __future__ import annotations

from pyro_gen.infer.annealing import (
    CyclicalAnnealing,
    KLScaleMessenger,
    LinearAnnealing,
    kl_scale,
    kl_scale_pair,
)
from pyro_gen.infer.callbacks import changes_only_tensors
from pyro_gen.infer.checkpoint import CheckpointError
from pyro_gen.infer.evaluation import bits_per_dim_from_nats, evaluate_elbo, iwae_log_likelihood
from pyro_gen.infer.fit import FitResult, NonFiniteLossError, fit

__all__ = [
    "CheckpointError",
    "CyclicalAnnealing",
    "FitResult",
    "KLScaleMessenger",
    "LinearAnnealing",
    "NonFiniteLossError",
    "bits_per_dim_from_nats",
    "changes_only_tensors",
    "evaluate_elbo",
    "fit",
    "iwae_log_likelihood",
    "kl_scale",
    "kl_scale_pair",
]
