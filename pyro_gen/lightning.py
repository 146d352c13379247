"""Any Pyro model/guide pair and Pyro loss as a Lightning ``LightningModule``.

:class:`LightningSVI` is for users who train with Lightning: its ``Trainer`` then brings
its strategies (DDP on one or many nodes), mixed precision, loggers and callbacks to a
pyro_gen model, or to any Pyro model and guide, with any Pyro loss. Everyone else trains
with :func:`pyro_gen.infer.fit`, the library's one loop; both take the same model, guide,
loss and ``transform=``.

Pyro creates parameters lazily, in its param store, the first time a model or guide runs
(``pyro.param``, autoguides), and Lightning builds the optimizer and the DDP wrapper from
the module's parameters before the first step. So the pair is traced once first, on
``example_batch=`` or on the first batch of the training data: every parameter that trace
registers (``pyro.module``, ``pyro.param``, autoguides) becomes a parameter of the
``LightningModule`` (those held only by the param store under their store names, in
``pyro_params``), is what the optimizer trains and what DDP averages, and is saved in
Lightning's checkpoints. The param store keeps pointing at the same tensors.

Needs the ``lightning`` extra: ``pip install pyro-gen[lightning]``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from pyro.infer import ELBO, Predictive, Trace_ELBO
from torch import nn

try:
    import lightning
except ImportError as e:  # pragma: no cover - the dev extra installs it
    raise ImportError(
        "pyro_gen.lightning needs Lightning: pip install pyro-gen[lightning] "
        "(or pip install lightning); pyro_gen.infer.fit trains without it"
    ) from e

from pyro_gen.data.batching import Call, Transform, as_call, with_transform
from pyro_gen.data.random_state import global_rng_state, rng_left_alone, set_global_rng_state
from pyro_gen.infer.annealing import checked_weight, kl_scale_pair
from pyro_gen.infer.argument_kinds import check_kinds
from pyro_gen.infer.batch_checks import warn_nothing_observed
from pyro_gen.infer.distributed import _plates
from pyro_gen.infer.elbo_module import unpack_elbo_module
from pyro_gen.infer.loss_value import reported_loss, subsampled_size
from pyro_gen.infer.pair_declarations import declared_plate
from pyro_gen.infer.program import Program, program, trace_once, warm_up
from pyro_gen.infer.program_checks import check_loss
from pyro_gen.infer.state_codec import decode, encode
from pyro_gen.infer.unregistered_params import warn_unregistered
from pyro_gen.lightning_loss import loss_and_grads_surrogate, loss_mode, move_loss_optimizers
from pyro_gen.lightning_optimizer import (
    average_gradients,
    check_built_optimizer,
    check_optimizer_factory,
    world_size,
)
from pyro_gen.lightning_params import trained_parameters
from pyro_gen.lightning_resume import forget_epoch_end_resume, resume_at_epoch_end
from pyro_gen.lightning_store import lost_params, store_lost_error

# builds a torch optimizer, or what configure_optimizers may return (with LR schedulers)
OptimizerFactory = Callable[[Iterable[nn.Parameter]], Any]

__all__ = ["LightningSVI"]

_RNG_KEY = "pyro_gen_rng_state"  # our entry in Lightning's checkpoint dict


class LightningSVI(lightning.LightningModule):
    """Stochastic variational inference (or any Pyro loss) as a ``LightningModule``.

    Each training step returns the loss of one batch (for an ELBO, the negative ELBO
    summed over the batch, as Pyro's ``SVI`` and :func:`~pyro_gen.infer.fit` minimise it)
    and Lightning takes the optimizer step. The loss may be

    - a Pyro ELBO with ``differentiable_loss`` (``Trace_ELBO``, ``TraceMeanField_ELBO``,
      ``TraceEnum_ELBO``, pyro_gen's ``FreeBitsELBO``, ...);
    - a callable loss ``loss(model, guide, *args, **kwargs)`` returning a differentiable
      scalar: pyro_gen's adversarial losses, Pyro's ``EnergyDistance``;
    - any other Pyro loss with ``loss_and_grads`` (``RenyiELBO``, so pyro_gen's ``iwae``,
      ``TraceGraph_ELBO``): it leaves its gradient on the parameters, which the step hands
      to Lightning as a surrogate whose gradient is exactly that one, so gradient
      accumulation, clipping and DDP apply to it as to the others.

    Under DDP a step on :math:`R` processes is the step of one process on their combined
    batch, as in ``fit``'s data-parallel training: DDP averages the processes' gradients,
    so an ELBO whose data plate is the batch (a sum over its examples) is multiplied by
    :math:`R` on each process, while an ELBO whose data plate subsamples
    (``pyro.plate("data", N, subsample=...)``, each process's loss an estimate of the whole
    data set's) and any other loss are averaged as they are (processes with equal batch
    sizes). Latent sites outside every plate are then counted :math:`R` times by a summed
    ELBO: subsample the data plate to count them once. An adversarial loss trains its
    discriminator inside the step with its own optimizer: under DDP its gradients are
    averaged across processes before each of its steps and its weights start from process
    0's, so every process keeps the same discriminator.

    Batches are what the ``DataLoader`` yields: a dict is passed to the model by name, a
    tuple or list positionally (a ``TensorDataset``'s ``[x]`` calls ``model(x)``), anything
    else as the one argument; ``transform=`` is applied on the device as in ``fit``. The
    training loss per example is logged as ``train_loss``, and the validation and test losses
    (the negative ELBO per example for an ELBO) as ``val_loss`` and ``test_loss``. From the
    same seed and the same batches in the same order, training draws what Pyro's ``SVI``
    loop draws: tracing the first batch and validating inside ``Trainer.fit`` (the sanity
    check, each epoch's) leave the global RNG as they found it, as ``fit`` does, so a
    validation loader changes nothing that is trained. (A guide whose first call draws, as an
    autoguide draws the model's sites to find them, draws that in the trace, not in the first
    step as under ``SVI``: call it once on a batch before either, RNG restored, to compare.)
    ``Trainer.predict`` gives each batch's draws of Pyro's ``Predictive(model, guide=guide,
    num_samples=1)``, as the module's ``forward`` does (as in Pyro's Lightning example), and
    the properties ``model`` and ``guide`` are the pair, so that ``evaluate_elbo(module,
    data)`` scores it.

    Args:
        model: a pyro_gen module (its ``model`` and ``guide`` are used) or a Pyro model
            callable.
        guide: a Pyro guide used instead of the module's; required for a model callable.
        loss: a Pyro loss (see above); default :class:`~pyro.infer.Trace_ELBO`.
        optimizer: builds the torch optimizer from the parameters the pair registered;
            default Adam with learning rate 1e-3 (``fit``'s default). With LR schedulers it
            returns what ``configure_optimizers`` may, e.g. ``{"optimizer": opt,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1)}``.
        transform: applied to each batch on the device (e.g. dynamic binarization).
        annealing: ``step -> beta`` scaling the latent sites (KL warm-up), as in ``fit``.
        example_batch: a batch to trace the pair on now; by default the first training
            batch is used when ``Trainer.fit`` starts.

    Example:
        >>> import lightning, torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from pyro_gen.vae import VAE
        >>> x = torch.rand(64, 8, 8).round()
        >>> svi = LightningSVI(VAE(event_shape=(8, 8), z_dim=2, hidden_dim=16))
        >>> trainer = lightning.Trainer(max_steps=5, accelerator="cpu", logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False,
        ...     enable_model_summary=False)
        >>> trainer.fit(svi, DataLoader(TensorDataset(x), batch_size=16))
        >>> trainer.global_step
        5
    """

    def __init__(
        self,
        model: Any,
        guide: Callable[..., Any] | None = None,
        *,
        loss: Any = None,
        optimizer: OptimizerFactory | None = None,
        transform: Transform | None = None,
        annealing: Callable[[int], float] | None = None,
        example_batch: Any = None,
    ) -> None:
        super().__init__()
        model, guide, loss = unpack_elbo_module(model, guide, loss)
        loss = loss if loss is not None else Trace_ELBO()
        check_loss(loss)  # the class Trace_ELBO, not called, has a differentiable_loss too
        check_kinds(annealing=annealing)
        check_optimizer_factory(optimizer)
        self._mode = loss_mode(loss)
        self._prog: Program = program(model, guide, loss)
        self._held_loss = [loss]  # a module loss is registered once, in pyro_modules
        self.optimizer_factory = optimizer or functools.partial(torch.optim.Adam, lr=1e-3)
        self.transform = transform
        self.annealing = annealing
        self._beta = [1.0]
        # what the training steps run, held in a tuple: an attribute would register a module
        # model or guide (an autoguide) a second time, and then refuse the annealed pair
        self._stepped = (self._prog.model, self._prog.guide)
        if annealing is not None:
            self._stepped = kl_scale_pair(*self._stepped, lambda: self._beta[0])
        # the model, guide and loss objects that are modules: their parameters, buffers and
        # extra state (an adversarial loss's optimizer) are in Lightning's checkpoints
        self.pyro_modules = nn.ModuleDict(self._prog.modules)
        # parameters that only the param store holds (plain pyro.param sites), by store name
        self.pyro_params = nn.ParameterDict()
        self._in_store: dict[str, nn.Parameter] = {}  # adopted param-store entries, by name
        self._trained: list[nn.Parameter] = []
        self._hooks: list[Any] = []
        self._example: Call | None = None  # the batch the pair was traced on
        self._represented: int | None = None
        self._eval_represented: int | None = None  # the same for the data being evaluated
        self._loss_scale = 1.0  # R for a summed ELBO under DDP (see above)
        self._training_rng: dict[str, Any] | None = None  # what validation must give back
        if example_batch is not None:
            self.trace_parameters(example_batch)

    @property
    def loss(self) -> Any:
        """The Pyro loss the steps minimise."""
        return self._held_loss[0]

    @property
    def model(self) -> Callable[..., Any]:
        """The Pyro model trained (without the ``annealing`` weight)."""
        return self._prog.model

    @property
    def guide(self) -> Callable[..., Any]:
        """The Pyro guide trained (without the ``annealing`` weight)."""
        return self._prog.guide

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """One draw of every sample site, latents from the guide: Pyro's
        ``Predictive(model, guide=guide, num_samples=1)(*args, **kwargs)``."""
        return Predictive(self.model, guide=self.guide, num_samples=1)(*args, **kwargs)

    # -- parameters ------------------------------------------------------------------------
    def trace_parameters(self, batch: Any) -> list[nn.Parameter]:
        """Runs guide and model once on ``batch`` (RNG unchanged, modules in eval mode) and
        makes every parameter they register a trained parameter of this module.

        Called by itself when ``Trainer.fit`` starts; call it yourself (or pass
        ``example_batch=``) to have the parameters before that, e.g. to count them.

        Returns:
            the parameters the optimizer trains, in the order the trace met them.
        """
        # the transform's draws (a dynamic binarization) are not the first step's: the RNG
        # goes back, as in fit, so training draws what Pyro's SVI loop would
        with rng_left_alone():
            call = self._example = self._call(batch, self._tensors_device())
        self._check_batch(call, 0)
        guide_trace, model_trace = warm_up(
            self._prog, call, check_sites=isinstance(self.loss, ELBO)
        )
        warn_unregistered(self._prog, call)  # a network never registered is never trained
        if isinstance(self.loss, ELBO):
            warn_nothing_observed(model_trace, call)
        # A subsampling data plate's full size: a step's loss stands for that many examples
        self._represented = subsampled_size(model_trace, declared_plate(self._prog.model))
        # networks a plain model or guide function closes over, found by that run
        for name, module in self._prog.modules.items():
            key = name.replace(".", "/")
            if key not in self.pyro_modules:
                self.pyro_modules[key] = module
        self._trained = trained_parameters(
            self, (guide_trace, model_trace), self.pyro_params, self._in_store
        )
        if not self._trained:
            raise ValueError(
                "the model and guide register no parameters (no pyro.module, pyro.param or "
                "autoguide site was traced on the example batch): there is nothing to train"
            )
        return self._trained

    def _tensors_device(self) -> torch.device:
        """Where this module's parameters and buffers are now. ``Trainer.fit`` sets
        ``self.device`` to the accelerator before it moves them there (after ``setup``), so
        the trace in ``setup`` runs beside them; with none yet, on the CPU, where the
        user's code creates tensors."""
        first = next(itertools.chain(self.parameters(), self.buffers()), None)
        return torch.device("cpu") if first is None else first.device

    def _check_store_holds_adopted(self, during_fit: bool = False) -> None:
        """The adopted ``pyro.param`` tensors must still be the store's, or the loss uses
        fresh ones while the optimizer steps ours: nothing trains, silently."""
        lost = lost_params(self._in_store)
        if lost:
            raise store_lost_error(lost, during_fit)

    # -- Lightning hooks -------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Traces the pair on the first training batch (unless done already), so that the
        optimizer and DDP see every parameter Pyro registered."""
        if self._trained:  # traced by example_batch= or an earlier Trainer.fit
            self._check_store_holds_adopted()  # validate/test would score fresh values too
        if stage != "fit":
            return
        if not self._trained:
            self._trace_first_batch()
        # DDP reduces the gradients of the parameters the loss trains; the others (an
        # adversarial loss's discriminator, unused submodules) get none from the loss
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            self, self._untrained_parameter_names()
        )
        world = self.trainer.world_size
        if world > 1 and isinstance(self.loss, ELBO) and self._example is not None:
            subsampled, _ = _plates(self._prog, self._example)
            self._loss_scale = 1.0 if subsampled else float(world)

    def _trace_first_batch(self) -> None:
        try:
            # A DataLoader's iterator draws its base seed (and a shuffling sampler its
            # order) from the global RNG: peeking must not shift the run's shuffles and
            # Pyro draws away from those of Pyro's SVI loop on the same seed.
            with rng_left_alone():
                loader = self.trainer.fit_loop._data_source.dataloader()
                batch = next(iter(loader))
        except StopIteration:
            raise ValueError(
                "the training DataLoader yields no batches: give Trainer.fit data to train on"
            ) from None
        except Exception as e:  # a data module or loader we cannot peek into
            raise RuntimeError(
                "LightningSVI could not read a first training batch to trace the model and "
                f"guide ({e}); pass LightningSVI(..., example_batch=batch)"
            ) from e
        self.trace_parameters(batch)

    def configure_optimizers(self) -> Any:
        if not self._trained:
            raise RuntimeError(
                "the model and guide have not been traced yet: pass example_batch= or call "
                "trace_parameters(batch) before configure_optimizers"
            )
        built = self.optimizer_factory(self._trained)
        check_built_optimizer(built, self._trained)
        return built

    def on_fit_start(self) -> None:
        """Moves the loss's own optimizers' state to the device; under DDP broadcasts the
        loss's weights from process 0 and has its optimizers step on averaged gradients."""
        move_loss_optimizers(self._loss_optimizers(), self.device)
        self._hold_training_rng()  # the sanity check's validation comes next
        if world_size() == 1:
            return
        for module in self._loss_modules():
            for tensor in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(tensor.data, src=0)
        for opt in self._loss_optimizers():
            self._hooks.append(opt.register_step_pre_hook(average_gradients))

    def on_fit_end(self) -> None:
        """Removes the DDP hooks and clears the trained parameters' gradients: they are the
        user's modules and param-store tensors, and Lightning leaves the last backward's
        gradients on them, which Pyro's ``SVI`` or ``fit`` would then add to its first
        step's (Pyro zeroes gradients after each step, not before the first)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        forget_epoch_end_resume(self.trainer.fit_loop)  # the loops decided when they loaded
        self._training_rng = None
        for p in self._trained:
            p.grad = None

    # Validation inside Trainer.fit (the sanity check, each epoch's) leaves the training RNG
    # as it found it, as fit's evaluation does: a val loader, its shuffle and the guide's
    # draws on it must not change the trained parameters or what a checkpoint resumes.
    # Lightning creates the val loader's iterator (a draw) before any validation hook, so
    # the state is held after each training batch, the last point before validation.
    def _hold_training_rng(self) -> None:
        if self.trainer.enable_validation:
            self._training_rng = global_rng_state()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._check_store_holds_adopted(during_fit=True)  # after callbacks' own batch ends
        self._hold_training_rng()

    def on_validation_end(self) -> None:
        if self.trainer.state.fn == "fit" and self._training_rng is not None:
            set_global_rng_state(self._training_rng)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        call = self._call(batch)
        # a batch the model or guide does not take is named here, as fit names it, not by
        # a TypeError from inside Pyro's handlers
        self._check_batch(call, batch_idx)
        if self.annealing is not None:
            step = self.global_step
            self._beta[0] = checked_weight(
                self.annealing(step), "annealing returned", f" at step {step}"
            )
        value = self._loss(call)
        size = call.size if call.size is not None else 1
        per_example = value.detach() / (self._represented or size)
        self.log("train_loss", per_example, prog_bar=True, batch_size=size)
        return value * self._loss_scale if self._loss_scale != 1.0 else value

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._evaluate(batch, batch_idx, "val_loss")

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._evaluate(batch, batch_idx, "test_loss")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        call = self._call(batch)
        self._check_batch(call, batch_idx)
        return self(*call.args, **call.kwargs)

    def _evaluate(self, batch: Any, batch_idx: int, metric: str) -> torch.Tensor:
        call = self._call(batch)
        self._check_batch(call, batch_idx)
        if batch_idx == 0:
            # Where the data plate subsamples, Pyro scales a batch of B by N / B: its value
            # stands for the held-out data's N examples (read off this data's own plate, as
            # fit's evaluation does), not for B, which counted it N / B times too high.
            with rng_left_alone():
                _, model_trace = trace_once(self._prog, call)
            self._eval_represented = subsampled_size(model_trace, declared_plate(self._prog.model))
        # As fit's evaluation reads it, of the pair without the annealing weight: a loss
        # object through its ``loss``, a callable loss (EnergyDistance, whose ``loss`` raises
        # NotImplementedError) called
        if hasattr(self.loss, "loss_and_grads"):
            evaluate = self.loss.loss
        elif self._mode == "differentiable":
            evaluate = self.loss.differentiable_loss
        else:
            evaluate = self.loss
        value = torch.as_tensor(
            reported_loss(evaluate(self.model, self.guide, *call.args, **call.kwargs))
        )
        size = call.size if call.size is not None else 1
        per_example = value / (self._eval_represented or size)
        self.log(metric, per_example, prog_bar=True, batch_size=size, sync_dist=True)
        return value

    # -- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adds the random number generators' states (torch, Python, numpy, and CUDA's once
        in use), which Lightning's checkpoints leave out, so that ``Trainer.fit(ckpt_path=)``
        continues a one-process run exactly (same shuffles, same Pyro draws) from a checkpoint
        saved at an epoch's end, under ``max_epochs`` or ``max_steps`` (see
        :mod:`pyro_gen.lightning_resume`). One saved inside an epoch does not: Lightning
        starts that epoch's ``DataLoader`` afresh (it warns that it is not resumable). Not
        under DDP, where Lightning saves rank 0's checkpoint only and restoring its state on
        every rank would give them all the same noise."""
        if self.trainer.world_size == 1:
            # a checkpoint saved during validation (ModelCheckpoint's on_validation_end runs
            # before ours) records the training RNG that validation will give back
            held = self._training_rng if self.trainer.validating else None
            state = held if held is not None else global_rng_state()
            checkpoint[_RNG_KEY] = encode(state, "RNG state")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restores the saved generators when ``Trainer.fit`` resumes (after the first-batch
        trace, before the first step; loading weights alone leaves the caller's RNG be).

        Raises:
            RuntimeError: if the checkpoint holds parameters that this module does not have
                yet because the pair was not traced (``load_from_checkpoint`` or
                ``Trainer.validate(ckpt_path=)`` on a fresh module); it says to pass
                ``example_batch=``.
        """
        own = self.state_dict().keys()
        held = checkpoint.get("state_dict", {})
        for key in [k for k in held if k.startswith(("_model.", "_guide."))]:
            del held[key]  # earlier versions saved a module model or guide twice
        unknown = [k for k in held if k not in own]
        if unknown and not self._trained:
            raise RuntimeError(
                f"the checkpoint holds {len(unknown)} entries (e.g. {unknown[0]!r}) that "
                "Pyro creates lazily, when the model and guide first run, and they have not "
                "run yet: pass a batch to trace them on, e.g. LightningSVI.load_from_checkpoint("
                "path, model=model, guide=guide, example_batch=batch), or call "
                "trace_parameters(batch) before Trainer.validate/test(ckpt_path=...)"
            )
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit":
            return
        resume_at_epoch_end(trainer.fit_loop, checkpoint)  # max_steps: see lightning_resume
        state = checkpoint.get(_RNG_KEY)
        if state is not None and trainer.world_size == 1:
            set_global_rng_state(decode(state))

    # -- the loss --------------------------------------------------------------------------
    def _call(self, batch: Any, device: torch.device | None = None) -> Call:
        return with_transform(as_call(batch, device), self.transform)

    def _check_batch(self, call: Call, index: int) -> None:
        """``fit``'s signature check of a batch, with the advice for a ``DataLoader`` (fit's
        own, ``data=lambda: ...``, is no argument of Lightning's)."""
        try:
            self._prog.check_call(call, index)
        except ValueError as e:
            said = str(e).split(". To leave out", 1)[0]
            if said == str(e):
                raise
            raise ValueError(
                f"{said}. To leave out what it does not use (a DataLoader of (x, label) pairs "
                "for a model(x)), have the DataLoader yield only what the model takes (its "
                "Dataset or collate_fn), or give the model and guide parameters for the rest "
                "(y=None)"
            ) from None

    def _loss(self, call: Call) -> torch.Tensor:
        model, guide = self._stepped
        if self._mode == "differentiable":
            return self.loss.differentiable_loss(model, guide, *call.args, **call.kwargs)
        if self._mode == "callable":
            return self.loss(model, guide, *call.args, **call.kwargs)
        return loss_and_grads_surrogate(self.loss, model, guide, call, self._trained, self.device)

    def _loss_modules(self) -> list[nn.Module]:
        return [self.loss] if isinstance(self.loss, nn.Module) else []

    def _loss_optimizers(self) -> Iterator[torch.optim.Optimizer]:
        for module in self._loss_modules():
            for value in vars(module).values():
                if isinstance(value, torch.optim.Optimizer):
                    yield value

    # -- DDP -------------------------------------------------------------------------------
    def _untrained_parameter_names(self) -> list[str]:
        trained = {id(p) for p in self._trained}
        return [name for name, p in self.named_parameters() if id(p) not in trained]
