"""The plates of :class:`~pyro_gen.vae.autoguide.AutoAmortizedNormal`: the model's other
plates, the data plate opened per call (sized by the batch, or replaying indices the model
subsamples with) and the model's masks of the local sites."""

from __future__ import annotations

from typing import Any

import pyro
import torch
import torch.utils._pytree as pytree
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_gen.vae.autoguide_trace import plate_sizes

__all__ = ["PlatesMixin", "call_key"]


class PlatesMixin:
    """AutoAmortizedNormal's plates (a mixin: the state is the guide's)."""

    def _create_plates(self, *args: Any, **kwargs: Any) -> dict[str, pyro.plate]:
        if self.master is not None:
            self.plates = self.master().plates
            return self.plates
        plates: dict[str, pyro.plate] = {}
        if self.create_plates is not None:
            made = self.create_plates(*args, **kwargs)
            made = [made] if isinstance(made, pyro.plate) else list(made)
            if not all(isinstance(p, pyro.plate) for p in made):
                raise TypeError("create_plates() must return a pyro.plate or plates")
            plates = {p.name: p for p in made}
        for name, f in self._prototype_frames.items():
            # the data plate is made per call, sized by the batch at hand
            if name not in plates and name != self.plate_name:
                plates[name] = pyro.plate(
                    name, f.full_size or f.size, subsample_size=f.size, dim=f.dim
                )
        self.plates = plates
        return plates

    def _user_plates(self) -> bool:
        """Whether the user makes the plates (this guide's or its AutoGuideList's
        ``create_plates``)."""
        return self.create_plates is not None or (
            self.master is not None and self.master().create_plates is not None
        )

    def _data_plate(
        self, plates: dict[str, pyro.plate], rows: int, device, args: tuple, kwargs: dict
    ) -> pyro.plate:
        f = self._data_frame
        user_plate = self._user_plates()
        if f.name in plates and (user_plate or (self._index_inputs and self.master is not None)):
            return plates[f.name]  # indices chosen by the user, or drawn once by the master
        full = f.full_size or f.size
        if self._index_inputs:  # the model replays the indices drawn here
            full, size = self._plate_sizes(rows, args, kwargs)
            return pyro.plate(f.name, full, subsample_size=size, dim=f.dim, device=device)
        # The rows at hand are the examples and only the scale N/B matters: the plate's
        # index site is kept out of the trace, so the model keeps its own indices (replayed
        # ones would override a model's subsample=idx) and a hand-written guide part may
        # open its own plate of this name next to this guide.
        indices = torch.arange(rows, device=device)
        with poutine.block(hide_fn=site_is_subsample):
            return pyro.plate(
                f.name, rows if full == f.size else full, subsample=indices, dim=f.dim
            )

    def _plate_sizes(self, rows: int, args: tuple, kwargs: dict) -> tuple[int, int]:
        """The full and subsample sizes of the data plate that the model subsamples itself,
        for this call: the trace's, or, for other data or other options than the trace's
        (a held-out set of another size, another ``batch_size=``), the model's own, read
        once per such call structure by running it as far as the plate."""
        known = self.__dict__.setdefault("_subsample_sizes", {})
        key = call_key(rows, args, kwargs)
        if key not in known:
            f = self._data_frame
            known[key] = plate_sizes(self.model, args, kwargs, f.name) or (rows, f.size)
        return known[key]

    @torch.no_grad()
    def _site_masks(self, data_plate: pyro.plate, args: tuple, kwargs: dict) -> dict[str, Any]:
        """The model's masks of the local sites for this call (e.g. padded steps of
        sequences): a guide that scored a site the model masks out would add that site's
        entropy to the ELBO unopposed. Read by one blocked run of the model."""
        if self.model is None:
            raise RuntimeError(
                "this AutoAmortizedNormal has lost its model (Pyro autoguides drop it when "
                "pickled) and needs it to read the model's masks: set guide._model = (model,)"
            )
        model = self.model
        if self._index_inputs:  # the model's plate must pick the rows this guide encodes
            model = poutine.condition(model, data={self.plate_name: data_plate.indices})
        trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
        return {name: trace.nodes[name]["mask"] for name in self._masked_sites}


def call_key(rows: int, args: tuple, kwargs: dict) -> tuple:
    """What decides a model's own subsampling of its data: the number of examples and the
    arguments that are not tensors (``batch_size=``, flags).

    Example:
        >>> call_key(128, (torch.zeros(128, 2),), {"batch_size": 32, "y": None})
        (128, 32, None)
    """
    return (rows, *(v for v in pytree.tree_leaves((args, kwargs)) if not torch.is_tensor(v)))
