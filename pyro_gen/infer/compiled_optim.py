"""A fused optimizer step whose state Pyro's optimizer can still save and load."""

from __future__ import annotations

from typing import Any

import pyro
import pyro.optim
import torch


class _FusedParamView:
    """Stands in Pyro's ``optim_objs`` for one parameter of the fused optimizer, so that
    ``PyroOptim.get_state()/set_state()`` (and so checkpoints) see per-parameter state in
    the format Pyro writes."""

    def __init__(self, optimizer: torch.optim.Optimizer, param: torch.Tensor) -> None:
        self.optimizer_ = optimizer
        self.param = param

    def _group(self) -> dict[str, Any]:
        return next(
            g for g in self.optimizer_.param_groups if any(q is self.param for q in g["params"])
        )

    def state_dict(self) -> dict[str, Any]:
        hyper = {k: v for k, v in self._group().items() if k != "params"}
        hyper.update(fused=None, foreach=None)
        state = self.optimizer_.state.get(self.param, {})
        state = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
        return {"state": {0: state} if state else {}, "param_groups": [{**hyper, "params": [0]}]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("state", {}).get(0)
        if state:
            p = self.param
            self.optimizer_.state[p] = {
                k: (v.to(p.device, torch.float32) if k == "step" else v.to(p.device, p.dtype))
                if torch.is_tensor(v)
                else v
                for k, v in state.items()
            }

    def step(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - guarded
        raise RuntimeError("a fused CompiledSVI optimizer cannot step one parameter")


def _fusable(optim: pyro.optim.PyroOptim) -> bool:
    ctor = getattr(optim, "pt_optim_constructor", None)
    return (
        ctor in (torch.optim.Adam, torch.optim.AdamW)
        and isinstance(optim.pt_optim_args, dict)
        and not optim.pt_clip_args
    )
