"""pyro_gen: deep generative models written the Pyro way."""

from __future__ import annotations

__version__ = "0.1.0"


def load(run: str, device: str = "cpu"):  # noqa: ANN201 - returns the run's model class
    """The trained model of a ``pyro-gen train`` run directory, on ``device``.

    The object has ``model``, ``guide``, ``sample`` (a CycleGAN: ``translate``) and, where
    exact, ``log_prob``; :func:`pyro_gen.runs.run_data` gives the data it was trained on and
    the transform each batch went through.
    Nothing in the directory is unpickled: ``config.json`` is parsed as JSON and
    ``checkpoint.pt`` is verified against its checksum, then read with torch's
    ``weights_only`` loader (see :mod:`pyro_gen.infer.checkpoint`).

    Raises:
        pyro_gen.runs.RunError: the directory or its ``config.json`` is missing or malformed.
        pyro_gen.infer.CheckpointError: ``checkpoint.pt`` is missing, damaged, of an older
            format, or of another model.
        ValueError: ``device`` is not a device this machine has (checked before anything
            is read).
    """
    from pyro_gen.cli import load_run

    return load_run(run, device)
