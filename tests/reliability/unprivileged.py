"""Running a test's driver script where permission bits apply: as root, in a child without
the capabilities that override them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_DROP = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


# The start of a driver script: a user's own Pyro pair and its data, X (16 x 3).
DRIVER_PAIR = r"""
import json, os, sys, warnings
from pathlib import Path
import pyro, pyro.distributions as dist, torch
from pyro_gen.infer import fit
from pyro_gen.infer.checkpoint import load_checkpoint
warnings.simplefilter("ignore")
X = torch.randn(16, 3)

def model(x):
    loc = pyro.sample("loc", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

def guide(x):
    pyro.sample("loc", dist.Normal(pyro.param("q_loc", torch.zeros(3)), 1.0).to_event(1))
"""


def run_unprivileged(driver: str, root: Path) -> dict:
    """Runs ``python -c driver root`` where permission bits apply and returns the JSON its
    last line prints; ``root`` and its folders are made writable again afterwards (a test
    driver makes them read-only). Skips where that cannot be arranged (root without
    ``setpriv``)."""
    as_root = os.geteuid() == 0
    if as_root and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permission bits do not apply")
    try:
        proc = subprocess.run(
            [*(_DROP if as_root else []), sys.executable, "-c", driver, str(root)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        for d in (root, *root.iterdir()):
            d.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])
