"""A training run for the kill -9 tests: python -m tests.reliability.train_until_killed RUN OUT
STEPS CHECKPOINT_EVERY. Trains the tiny VAE with checkpoints, then saves its final state to OUT.
Each step sleeps a little so that a kill lands at a random point inside training."""

from __future__ import annotations

import sys
import time

import pyro
import torch

from pyro_gen.infer import fit
from tests.infer.tiny_vae import TinyVAE, binary_data


def main(run: str, out: str, steps: int, checkpoint_every: int) -> None:
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    model = TinyVAE()
    fit(
        model,
        binary_data(),
        steps=steps,
        batch_size=16,
        progress=False,
        checkpoint_dir=run,
        checkpoint_every=checkpoint_every,
        step_callbacks=[lambda step, m: time.sleep(0.004)],
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["logit_shift"] = pyro.param("logit_shift").detach().clone()
    torch.save(state, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
