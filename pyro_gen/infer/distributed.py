"""Data-parallel training on :mod:`torch.distributed`: the process group, the sharding of
each epoch's batches, the gradient all-reduce and the rank-0 gate that :func:`fit` uses.

``fit`` trains data-parallel when it runs in one of several processes: a process group is
already initialized, or ``torchrun`` set ``WORLD_SIZE`` > 1 (``fit`` then initializes the
group itself: NCCL on CUDA, gloo on the CPU). Every process keeps a full replica of the
model and the optimizer; a step is

.. math::

    g = \\sum_r w_r \\nabla_\\theta \\mathcal{L}_r, \\qquad \\theta \\leftarrow
    \\mathrm{update}(\\theta, g),

with one all-reduce of the gradients of the parameters Pyro registered (the set of a Pyro
program's parameters is only known after tracing it, so the all-reduce runs on the
param-store gradients between the gradient and the update rather than through
``DistributedDataParallel``). The weights make one step on :math:`R` ranks the step of one
process on the combined batch:

* an ELBO whose data plate is the batch (``pyro.plate("data", x.shape[0])``) is a sum over
  the batch's examples, so the combined batch's loss is the sum of the ranks' losses:
  :math:`w_r = 1`;
* an ELBO whose data plate subsamples (``pyro.plate("data", N, subsample=...)``) scales
  each rank's examples by :math:`N / B_r`; the combined batch scales by :math:`N / B`
  (:math:`B = \\sum_r B_r`) and counts global sites once, so :math:`w_r = B_r / B`;
* any other loss is an estimate per batch, averaged likewise: :math:`w_r = B_r / B`.

Gradient clipping applies to the reduced gradient, as it would in one process.

Tensor data are sharded by splitting the combined batch: every rank draws the same
shuffle order (the RNG stream of the epoch orders is shared), takes the combined batch of
``batch_size * world_size`` examples that one process would take, and keeps its part of
it, so ``batch_size`` is per process as with ``DistributedDataParallel``. The user's own
batches (a ``DataLoader``) are dealt out in turn: rank ``r`` takes batches ``r``, ``r + R``,
...; a ``DataLoader`` with a :class:`~torch.utils.data.DistributedSampler` is already
sharded and is used as it comes (with ``set_epoch`` called each epoch). Each rank draws
its sampling noise from its own stream, seeded from the shared one and its rank, and all
streams are recorded in checkpoints, so a run resumes exactly under the same world size.
Evaluation, checkpoints, metrics and the progress bar are rank 0's.

The sharding lives in :mod:`~pyro_gen.infer.distributed_batches`, the all-reduce in
:mod:`~pyro_gen.infer.distributed_reduce`; both are importable from here.

Example:
    >>> is_main_process()  # a single process is its own rank 0
    True
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import pyro
import pyro.util
import torch
import torch.distributed as dist
from pyro import poutine
from pyro.infer import ELBO
from pyro.poutine.util import site_is_subsample

from pyro_gen.data.batching import Call
from pyro_gen.data.random_state import set_pyro_rng_state
from pyro_gen.infer.distributed_batches import ShardedBatches
from pyro_gen.infer.distributed_reduce import GradReducer
from pyro_gen.infer.module_modes import module_modes, restore_modes

T = TypeVar("T")
logger = logging.getLogger("pyro_gen")

__all__ = [
    "DataParallel",
    "GradReducer",
    "ShardedBatches",
    "is_main_process",
    "rng_state",
    "set_rng_state",
    "setup",
]


def is_main_process() -> bool:
    """Whether this process is rank 0 (or the only process): the one that writes.

    Reads the initialized process group, else ``torchrun``'s ``RANK`` variable, so it can
    be asked before :func:`fit` has joined the group.

    Example:
        >>> is_main_process()
        True
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not a whole number") from None


def setup(device: torch.device) -> DataParallel | None:
    """The data-parallel context of this process, or None for a single process.

    Uses an initialized process group, else initializes one from ``torchrun``'s variables
    (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL for
    a CUDA ``device``, gloo otherwise. A CUDA device without an index becomes
    ``cuda:LOCAL_RANK``, one GPU per process.

    Raises:
        RuntimeError: when the group's backend cannot reduce tensors on ``device``.
    """
    initialized = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialized else (_env_int("WORLD_SIZE") or 1)
    if world <= 1:
        return None
    if not dist.is_available():
        raise RuntimeError(
            f"WORLD_SIZE={world} asks for data-parallel training, but this PyTorch build has "
            "no torch.distributed; run one process, or install a build with it"
        )
    local_rank = _env_int("LOCAL_RANK")
    if device.type == "cuda":
        index = device.index if device.index is not None else (local_rank or 0)
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)  # NCCL's object collectives use the current device
    owns = False
    if not initialized:
        if _env_int("RANK") is None:
            raise RuntimeError(
                f"WORLD_SIZE={world} is set but RANK is not: launch with torchrun, or "
                "initialize torch.distributed before calling fit"
            )
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
        atexit.register(_destroy)
        owns = True
    elif dist.get_backend() == "nccl" and device.type != "cuda":
        raise RuntimeError(
            f"the process group uses NCCL, which reduces CUDA tensors only, and fit trains "
            f"on {device}: pass device='cuda', or initialize the group with backend='gloo'"
        )
    return DataParallel(dist.get_rank(), dist.get_world_size(), device, owns)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rng_state(device: torch.device) -> dict[str, Any]:
    """:func:`pyro.util.get_rng_state`, plus the generator of a CUDA ``device`` (tensor
    data there draw their shuffle order, and models their noise, from it).

    Example:
        >>> sorted(rng_state(torch.device("cpu")))
        ['numpy', 'random', 'torch']
    """
    state = pyro.util.get_rng_state()
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restores a state of :func:`rng_state` (or of :func:`pyro.util.get_rng_state`), also
    one loaded onto the device (generators take their states as CPU byte tensors)."""
    set_pyro_rng_state(state)
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


class DataParallel:
    """One process's place in a data-parallel run and the collectives :func:`fit` needs.

    Args:
        rank: this process's rank.
        world_size: number of processes.
        device: where this process trains.
        owns_group: whether :func:`setup` initialized the process group (it is then
            destroyed at exit).
    """

    def __init__(self, rank: int, world_size: int, device: torch.device, owns_group: bool) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self.owns_group = owns_group
        # "sum" (w_r = 1) or "mean" (w_r = B_r / B): see the module docstring.
        self.reduction = "mean"
        self._shared: dict[str, Any] | None = None  # the epoch-order stream, while in an epoch
        self._local: dict[str, Any] | None = None  # this rank's noise stream, between epochs
        self._in_epoch = False
        self._reducer: GradReducer | None = None

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that evaluates and writes."""
        return self.rank == 0

    # -- agreement ----------------------------------------------------------------------

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Runs ``fn`` on rank 0 and returns its result on every rank; an error it raises
        is raised on every rank, so no rank is left waiting in a collective."""
        outcome: tuple[bool, Any] = (True, None)
        if self.main:
            try:
                outcome = (True, fn())
            except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
                outcome = (False, e)
        ok, value = self.broadcast(outcome)
        if not ok:
            raise value
        return value

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank."""
        t = torch.tensor([int(flag)], device=self._collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _collective_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    # -- start: the same state everywhere ------------------------------------------------

    def start(
        self, modules: Mapping[str, torch.nn.Module], loss: Any, prog: Any, call: Call
    ) -> None:
        """Makes every rank start from rank 0's RNG state, parameters and buffers, and
        decides how gradients combine (:attr:`reduction`) from the model's plates.

        Raises:
            RuntimeError: when the ranks' param stores hold different parameters.
        """
        set_rng_state(self.broadcast(rng_state(self.device)), self.device)
        store = pyro.get_param_store()
        names = sorted(name for name, _ in store.named_parameters())
        everyone = [None] * self.world_size
        dist.all_gather_object(everyone, names)
        if any(n != names for n in everyone):
            raise RuntimeError(
                "the processes' Pyro param stores hold different parameters (rank 0: "
                f"{everyone[0]}; rank {self.rank}: {names}): build the same model on every rank"
            )
        tensors = [store[name].unconstrained() for name in names]
        tensors += [t for m in modules.values() for t in (*m.parameters(), *m.buffers())]
        self._broadcast_tensors(tensors)
        subsampled, global_sites = _plates(prog, call)
        self.reduction = "sum" if isinstance(loss, ELBO) and not subsampled else "mean"
        if self.reduction == "sum" and global_sites and self.main:
            logger.warning(
                "pyro_gen: latent sites %s sit outside every plate, so each of the %d "
                "processes counts their terms of the ELBO and the summed step counts them %d "
                "times: give the data plate the data set's size and subsample it "
                "(pyro.plate('data', N, subsample=...)) to count them once",
                global_sites,
                self.world_size,
                self.world_size,
            )
        everyone = [None] * self.world_size
        dist.all_gather_object(everyone, self.reduction)
        if len(set(everyone)) > 1:
            raise RuntimeError(
                "the ranks' first batches disagree on whether the data plate subsamples "
                f"(reductions by rank: {everyone}): every rank must run the same model"
            )
        self.seed_streams()

    def _broadcast_tensors(self, tensors: Sequence[torch.Tensor]) -> None:
        seen: set[int] = set()
        with torch.no_grad():
            for t in tensors:
                if id(t) in seen:  # a module parameter is also a param-store entry
                    continue
                seen.add(id(t))
                if t.is_contiguous() and t.device == self.device:
                    dist.broadcast(t, src=0)
                else:
                    buffer = t.detach().to(self.device).contiguous()
                    dist.broadcast(buffer, src=0)
                    t.copy_(buffer)

    def sync_buffers(self, modules: Mapping[str, torch.nn.Module]) -> None:
        """Rank 0's module buffers (running statistics, an EMA) on every rank, as
        ``DistributedDataParallel`` keeps them; done where a checkpoint may be written, so
        an interrupted run and the same run resumed agree."""
        self._broadcast_tensors([b for m in modules.values() for b in m.buffers()])

    # -- RNG streams ---------------------------------------------------------------------

    def seed_streams(self) -> None:
        """Seeds this rank's noise stream from the shared stream and the rank, without
        moving the shared stream (so the epoch orders are those of one process)."""
        shared = rng_state(self.device)
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        pyro.set_rng_seed(seed + self.rank)
        self._local = rng_state(self.device)
        set_rng_state(shared, self.device)
        self._in_epoch = False

    def enter_epoch(self) -> None:
        """After the epoch's order is drawn from the shared stream: this rank's noise
        stream takes over for the steps."""
        self._shared = rng_state(self.device)
        set_rng_state(self._local, self.device)
        self._in_epoch = True

    def leave_epoch(self) -> None:
        """At the epoch's end (or where training stops inside it): back to the shared
        stream, which every rank holds in the same state."""
        self._local = rng_state(self.device)
        set_rng_state(self._shared, self.device)
        self._in_epoch = False

    def gather_streams(self) -> list[dict[str, Any]] | None:
        """Every rank's streams, on rank 0 (None elsewhere), for a checkpoint."""
        current = rng_state(self.device)
        mine = {
            "shared": self._shared if self._in_epoch else current,
            "local": current if self._in_epoch else self._local,
        }
        everyone = [None] * self.world_size if self.main else None
        dist.gather_object(mine, everyone, dst=0)
        return everyone

    def restore_streams(self, streams: Sequence[dict[str, Any]]) -> None:
        """Restores this rank's streams from a checkpoint's :meth:`gather_streams`."""
        mine = streams[self.rank]
        self._local = mine["local"]
        set_rng_state(mine["shared"], self.device)
        self._in_epoch = False

    # -- data and gradients --------------------------------------------------------------

    def shard(self, data: Any, batch_size: int) -> ShardedBatches:
        """This rank's share of each epoch's batches (see the module docstring)."""
        return ShardedBatches(data, batch_size, self.rank, self.world_size, self.device)

    def reducer(self, grad_clip: float | None) -> GradReducer:
        """The all-reduce that :class:`~pyro_gen.infer.compiled.CompiledSVI` runs between
        the gradient and the update."""
        self._reducer = GradReducer(self.device, grad_clip)
        return self._reducer

    def begin_step(self, size: int, combined: int) -> None:
        """Before a step on ``size`` of the combined batch's ``combined`` examples."""
        assert self._reducer is not None, "reducer() first"
        self._reducer.begin_step(1.0 if self.reduction == "sum" else size / combined)


def _plates(prog: Any, call: Call) -> tuple[bool, list[str]]:
    """Whether a sample site of the model sits in a plate that subsamples (its scale
    depends on the batch size), and the latent sites outside every plate, from one trace
    of guide and model on ``call`` that moves neither the RNG nor running statistics."""
    modes = module_modes(prog.modules.values())
    for m in prog.modules.values():
        m.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            state = pyro.util.get_rng_state()
            guide_trace = poutine.trace(prog.guide).get_trace(*call.args, **call.kwargs)
            model = poutine.replay(prog.model, trace=guide_trace)
            trace = poutine.trace(model).get_trace(*call.args, **call.kwargs)
            pyro.util.set_rng_state(state)
    finally:
        restore_modes(modes)
    sites = [s for s in trace.nodes.values() if s["type"] == "sample"]
    subsampled = any(
        f.full_size not in (None, f.size) for s in sites for f in s["cond_indep_stack"]
    )
    global_sites = [
        s["name"]
        for s in sites
        if not s["is_observed"] and not s["cond_indep_stack"] and not site_is_subsample(s)
    ]
    return subsampled, global_sites
