"""pyro_gen: deep generative models written the Pyro way."""

from __future__ import annotations

__version__ = "0.1.0"


def load(run: str, device: str = "cpu"):  # noqa: ANN201 - returns the run's model class
    """The trained model of a ``pyro-gen train`` run directory, on ``device``.

    The object has ``model``, ``guide``, ``sample`` and, where exact, ``log_prob``.
    """
    from pyro_gen.cli import load_run

    return load_run(run, device)
