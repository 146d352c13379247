"""kill -9 of a process training a user's own program (a PyroModule with an AutoNormal
guide, a ``pyro.param`` outside any module, the user's shuffling DataLoader, ClippedAdam,
``steps=`` and mid-epoch checkpoints), then a resume in a fresh process: the same params,
optimizer state and random states as a process never killed, bit for bit.

The process kills itself from a step callback at a chosen step, so the kill lands at the
same point every time (between two mid-epoch checkpoints), with no sleeping or timing.
Run as ``python -m tests.reliability.test_user_programs_kill RUN OUT SEED [KILL_AT]``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
STEPS, CHECKPOINT_EVERY, KILL_AT = 17, 4, 10  # 6 batches an epoch: killed inside epoch 2


def train(run: Path, out: Path, seed: int, kill_at: int | None) -> None:
    """The user's program; writes its final state to ``out`` (never reached when killed)."""
    import pyro
    import pyro.distributions as dist
    import pyro.optim
    from pyro.distributions import constraints
    from pyro.infer.autoguide import AutoNormal
    from pyro.nn import PyroModule, PyroParam, PyroSample

    from pyro_gen.infer import fit

    class Regression(PyroModule):
        def __init__(self) -> None:
            super().__init__()
            self.linear = PyroModule[torch.nn.Linear](3, 1)
            self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
            self.sigma = PyroParam(torch.tensor(1.0), constraint=constraints.positive)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
            shift = pyro.param("shift", torch.zeros(()))  # the user's own, in no module
            mean = self.linear(x).squeeze(-1) + shift
            with pyro.plate("data", 24, subsample=torch.arange(x.shape[0])):
                pyro.sample("obs", dist.Normal(mean, self.sigma), obs=y)

    torch.manual_seed(0)
    x = torch.randn(24, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(24)
    pyro.set_rng_seed(seed)  # a resume restores the checkpoint's instead
    pyro.clear_param_store()
    model = Regression()
    guide = AutoNormal(model)
    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.99})
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=4, shuffle=True
    )

    def kill(step: int, m: object) -> None:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    fit(model, loader, guide=guide, optim=optim, steps=STEPS, checkpoint_dir=run,
        checkpoint_every=CHECKPOINT_EVERY, step_callbacks=[kill], progress=False,
        compile=False)  # fmt: skip
    state = {
        "params": {k: v.detach() for k, v in pyro.get_param_store().items()},
        "optim": optim.get_state(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": torch.tensor(random.getstate()[1]),
        "numpy_rng": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
    }
    torch.save(state, out)


def _child(
    run: Path, out: Path, seed: int, kill_at: int | None = None
) -> subprocess.CompletedProcess:
    module = "tests.reliability.test_user_programs_kill"
    args = [sys.executable, "-m", module, str(run), str(out), str(seed)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args += [str(kill_at)] if kill_at is not None else []
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # two fresh processes (imports dominate)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_kill_9_of_a_user_program_then_resume_is_bit_exact(tmp_path):
    train(tmp_path / "straight", tmp_path / "straight.pt", seed=1, kill_at=None)  # here: faster
    killed = _child(tmp_path / "killed", tmp_path / "never.pt", seed=1, kill_at=KILL_AT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "never.pt").exists()
    resumed = _child(tmp_path / "killed", tmp_path / "resumed.pt", seed=7)
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "straight.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert a["params"].keys() == {
        "shift",
        "sigma",
        "AutoNormal.locs.linear.weight",
        "AutoNormal.scales.linear.weight",
        "linear.bias",
    }
    # imported here: the module is also the child's script, run without the tests package
    from tests.reliability.identical_state import assert_identical

    assert_identical(a, b)
    # nothing a killed writer leaves behind stays after the resume
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == [
        ".pyro-gen.lock",
        "checkpoint.pt",
        "metrics.jsonl",
    ]


if __name__ == "__main__":
    kill_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    train(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), kill_at)
