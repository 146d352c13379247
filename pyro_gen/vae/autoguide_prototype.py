"""How :class:`~pyro_gen.vae.autoguide.AutoAmortizedNormal` reads the model: its
arguments, its trace, the data plate and the encoder's inputs, and builds the encoder and
the global guide from them (the guide's prototype, as Pyro's autoguides call it)."""

from __future__ import annotations

from typing import Any

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal
from pyro.poutine.indep_messenger import CondIndepStackFrame

from pyro_gen.vae.autoguide_encoder import local_site, make_encoder, start_locs_at
from pyro_gen.vae.autoguide_init import CheckedInit, full_plate_locs, per_example_locs
from pyro_gen.vae.autoguide_inputs import (
    bind_arguments,
    choose_inputs,
    encoder_rows,
    model_signature,
    sized_arguments,
    skipped_integer_arguments,
)
from pyro_gen.vae.autoguide_plates import call_key
from pyro_gen.vae.autoguide_trace import (
    check_latent_sites,
    find_data_plate,
    random_plates_of,
    trace_latents,
)

__all__ = ["PrototypeMixin"]


class PrototypeMixin:
    """AutoAmortizedNormal's reading of the model (a mixin: the state is the guide's)."""

    def _arguments(self, args: tuple, kwargs: dict) -> dict[int | str, Any]:
        """The model's arguments by parameter name (by position if it takes ``*args``)."""
        if self._signature is None and self.model is not None:
            # kept, because a pickled Pyro autoguide drops its model
            self._signature = model_signature(self.model)
        return bind_arguments(self._signature, args, kwargs)

    def _rows(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """Per-example inputs, ``(rows, features)``: the minibatch, or the full data."""
        if self.input_fn is not None:
            return self.input_fn(*args, **kwargs)
        return encoder_rows(self._arguments(args, kwargs), self._input_keys)

    def _find_data_plate(self, trace: Any, args: tuple, kwargs: dict) -> CondIndepStackFrame:
        rows = self.input_fn(*args, **kwargs).shape[0] if self.input_fn is not None else None

        def has_inputs(f: CondIndepStackFrame) -> bool:
            sizes = {f.size, f.full_size or f.size}
            if rows is not None:  # the encoder's rows are the examples: a plate of their number
                return rows in sizes
            return bool(sized_arguments(self._arguments(args, kwargs), sizes))

        def skipped(sizes: set[int]) -> str:  # input_fn's rows are what it chose to encode
            return (
                ""
                if rows is not None
                else skipped_integer_arguments(self._arguments(args, kwargs), sizes)
            )

        return find_data_plate(trace, self.plate_name, has_inputs, skipped)

    def _choose_inputs(
        self, frame: CondIndepStackFrame, draws_indices: bool, args: tuple, kwargs: dict
    ) -> None:
        if self.input_fn is None:
            arguments = self._arguments(args, kwargs)
            self._input_keys, self._index_inputs = choose_inputs(frame, arguments)
        else:
            full = frame.full_size or frame.size
            rows = self.input_fn(*args, **kwargs).shape[0]
            self._index_inputs = full != frame.size and rows == full
        if self._index_inputs and not draws_indices and not self._user_plates():
            raise ValueError(
                f"plate {frame.name!r} subsamples the full data with indices the model "
                f"chooses itself (subsample=...), which the guide cannot see: pass "
                f"create_plates=lambda *args, **kwargs: pyro.plate({frame.name!r}, "
                f"{frame.full_size or frame.size}, subsample=<the same indices>), or pass "
                f"the minibatch to the model"
            )

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        init = None if self.init_loc_fn is None else CheckedInit(self.init_loc_fn)
        if init is not None and self.master is not None:
            self._check_plates_seen(args, kwargs)
        trace, random_plates, enumerated, subsamples = trace_latents(self.model, args, kwargs, init)
        check_latent_sites(trace)
        self.prototype_trace = trace
        if self.master is not None:
            self.master()._check_prototype(trace)
        self._prototype_frames = {
            f.name: f for _, site in trace.iter_stochastic_nodes() for f in site["cond_indep_stack"]
        }
        frame = self._find_data_plate(trace, args, kwargs)
        self.plate_name, self._data_frame = frame.name, frame
        subsampled = frame.full_size not in (None, frame.size)
        if subsampled and frame.name not in random_plates and self.master is not None:
            # a part of an AutoGuideList, whose model may hide the plate's own indices
            # (expose=[...]): the list draws them for the model to replay, if it draws any
            random_plates |= random_plates_of(self.master().model, args, kwargs) & {frame.name}
        self._choose_inputs(frame, frame.name in random_plates, args, kwargs)

        local, global_names = {}, []
        for name, site in trace.iter_stochastic_nodes():
            if all(f.name != frame.name for f in site["cond_indep_stack"]):
                global_names.append(name)
                continue
            local[name] = local_site(site, frame)
        self.local_sites = local
        self._masked_sites = [n for n in local if trace.nodes[n]["mask"] is not None]

        total = sum(s["numel"] for s in local.values())
        rows = self._rows(args, kwargs)
        # the data plate's sizes for calls like this one (see _plate_sizes)
        self._subsample_sizes = {
            call_key(rows.shape[0], args, kwargs): (frame.full_size or frame.size, frame.size)
        }
        self.net = make_encoder(rows, self.hidden_dims, total, self.init_scale)
        if init is not None:
            # Pyro's meaning (each site's loc starts at the init value) for a loc that is a
            # function of the example: the loc head is set to the map giving each example
            # its value (weights 0 and bias the value where it is common, the least-squares
            # fit where it differs), rather than an offset beside the encoder, so the guide
            # stays a plain encoder and checkpoints and the compiled step see nothing new.
            full = frame.full_size or frame.size
            if frame.name in random_plates and not self._index_inputs:
                _refuse_random_indices(init.full_values, frame.name, full)
            every = full_plate_locs(trace, local, init.full_values, frame.name, full)
            if self._index_inputs and every is not None:  # the full data, a value for each
                start_locs_at(self.net, rows, every)
            else:
                if self._index_inputs:  # the full data: the examples the trace's plate took
                    rows = rows[subsamples[frame.name]]
                start_locs_at(self.net, rows, per_example_locs(trace, local, frame.size))
        if global_names:
            hidden = list(local) + enumerated
            # a strategy of its own: its trace draws its own indices, which this one's
            # reading of the prototype's plates would not know
            options = {} if init is None else {"init_loc_fn": CheckedInit(self.init_loc_fn)}
            self.global_guide = AutoNormal(poutine.block(self.model, hide=hidden), **options)
        if self.master is not None:
            self._release_data_plate()

    def _release_data_plate(self) -> None:
        """In an AutoGuideList, keep the list from opening the data plate at the size it
        was traced with: the list opens every plate of its prototype on each call, which
        records the plate's indices, and the model replays them, so a later batch of
        another size (an epoch's last, a held-out set) failed with "Shape mismatch inside
        plate('data')". This guide opens the data plate per call, sized by the batch; it
        is taken out of the list's plates only where no other part needs it: the list's
        latents in the data plate are all this guide's, the model does not subsample the
        data with indices the list draws, and the user does not make the plates."""
        master = self.master()
        frames = getattr(master, "_prototype_frames", None)
        if not frames or self.plate_name not in frames:
            return
        if self._index_inputs or self._user_plates():
            return
        for name, site in master.prototype_trace.iter_stochastic_nodes():
            in_plate = any(f.name == self.plate_name for f in site["cond_indep_stack"])
            if in_plate and name not in self.local_sites:
                return  # another part's latent, guided per example under the list's plate
        del frames[self.plate_name]

    def _check_plates_seen(self, args: tuple, kwargs: dict) -> None:
        """Init values are placed by the examples a plate drew (see Initialization), which
        a part's model blocked with ``expose=`` hides (the plate's indices are a site too);
        without them a value per example would be refused as the wrong shape, or a common
        one fail, so this says what to change."""
        hidden = random_plates_of(self.master().model, args, kwargs) - random_plates_of(
            self.model, args, kwargs
        )
        if hidden:
            raise ValueError(
                f"init_loc_fn: this AutoGuideList part's model hides the indices plate(s) "
                f"{sorted(hidden)} draw (poutine.block(model, expose=[...]) blocks them as "
                "sites too), so the init values cannot be placed on their examples: block "
                "the other parts' sites with poutine.block(model, hide=[...]) instead"
            )

    def _check_prototype(self, part_trace: Any) -> None:
        # the global AutoNormal reports its prototype to its master, as in an AutoGuideList
        # the distributions' shapes, not the values': a global site under a subsampled
        # plate may hold an init value of the plate's full size there (see CheckedInit)
        for name, site in part_trace.iter_stochastic_nodes():
            mine = self.prototype_trace.nodes[name]
            if _shape(site) != _shape(mine):
                raise ValueError(f"site {name!r} changed shape while the guide was built")


def _shape(site: dict) -> torch.Size:
    return site["fn"].batch_shape + site["fn"].event_shape


def _refuse_random_indices(
    full_values: dict[str, tuple[torch.Tensor, tuple[str, ...]]], plate: str, full: int
) -> None:
    """Refuses values for every example of a plate that draws random indices around the
    minibatch the model is given: the indices do not say which examples the rows are."""
    names = sorted(n for n, (_, plates) in full_values.items() if plate in plates)
    if names:
        raise ValueError(
            f"init_loc_fn gave sites {names} one value per example of the data set "
            f"({full} along plate {plate!r}), but that plate draws its subsample indices at "
            f"random (subsample_size=) while the model is given the minibatch, so nothing "
            f"says which of those values are the minibatch's examples: open the plate with "
            f"subsample=<the minibatch's indices in the data set>, give the values of this "
            f"call's examples, or give the model the full data to subsample"
        )
