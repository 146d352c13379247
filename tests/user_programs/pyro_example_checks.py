"""Pieces shared by the tests of Pyro's examples (test_pyro_example_*.py): the log lines of
the ``"pyro_gen"`` logger, and the scANVI-like program's loss, data plate and count
transform, which the annealing tests reuse."""

from __future__ import annotations

import pyro
import pyro.optim
from pyro.infer import TraceEnum_ELBO


def pyro_gen_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pyro_gen"]


def _scanvi_loss() -> TraceEnum_ELBO:
    # labelled batches have nothing to enumerate, as in Pyro's example
    return TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)


def _cells_plate(x, y=None, batch_size=None):
    # What Pyro's autoguides take to subsample as the model does (create_plates).
    return pyro.plate("cells", x.shape[0], subsample_size=batch_size)


def _log_counts(x, y=None, batch_size=None):
    # The encoder reads log counts, as the example's encoders do (raw counts of ~50 put
    # the library size's initial guess far out).
    return x.log1p()
