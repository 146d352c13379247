"""The full-chain form of :class:`~pyro_gen.diffusion.DDPM`: the reverse Markov chain as the
model and the forward process, factored site by site to pair with it, as the guide (a
Markovian hierarchical VAE, so ``Trace_ELBO`` on the pair is the exact DDPM bound)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from pyro_gen.diffusion.context import (
    check_outer_dims,
    check_sampler_choice,
    data_plate,
    expand_context,
)
from pyro_gen.diffusion.network import register_module
from pyro_gen.diffusion.score_samplers import SAMPLERS

__all__ = ["GENERATORS", "FullChainForm"]

#: samplers of a DDPM's generative program, ``model(None, num_samples, sampler=...)``: its own
#: reverse chain, DDIM, and the score-based samplers of its SDE
GENERATORS = ("ancestral", "ddim", *SAMPLERS)


class FullChainForm:
    """Mixin of :class:`~pyro_gen.diffusion.DDPM`: sites ``x_T``, ..., ``x_1`` and ``x_0``.

    Reads the DDPM's ``schedule``, ``event_dim``, ``net_shape``, ``name``,
    ``large_log_variance``, ``sample_reference``, ``to_model_space``, ``p_mean_logvar``,
    ``decoder``, ``_normal`` and ``_times``.

    Example:
        >>> from pyro_gen.diffusion import DDPM
        >>> from pyro_gen.nn.time_embedding import TimeMLP
        >>> m = DDPM(TimeMLP(2, 16, num_layers=1), (2,), timesteps=3, form="full_chain")
        >>> x = torch.randn(5, 2)
        >>> guide = pyro.poutine.trace(m.chain_guide).get_trace(x)
        >>> [n for n, s in guide.nodes.items() if s["type"] == "sample"]
        ['data', 'x_3', 'x_2', 'x_1']
        >>> model = pyro.poutine.trace(pyro.poutine.replay(m.chain_model, guide)).get_trace(x)
        >>> [n for n, s in model.nodes.items() if s["type"] == "sample"]
        ['data', 'x_3', 'x_2', 'x_1', 'x_0']
    """

    def chain_model(
        self, x: torch.Tensor | None = None, num_samples: int = 1, **context
    ) -> torch.Tensor:
        """Generative chain :math:`x_T \\to \\dots \\to x_0`; observes ``x`` at ``"x_0"``;
        ``context`` goes to the network. Without data the draw is also recorded in data space
        at the deterministic site ``"x"`` (images in [0, 1], shaped as the data)."""
        register_module(self.name, self)
        T = self.schedule.num_timesteps
        x0 = None if x is None else self.to_model_space(x, outer=True)
        if x0 is not None:
            check_outer_dims(x0, self.event_dim, type(self).__name__, time_plate=False)
        # data may have outer plates' dims (a latent's particles) before the batch dim
        batch = num_samples if x0 is None else x0.shape[x0.dim() - self.event_dim - 1]
        zeros = self.sample_reference().new_zeros((batch, *self.net_shape))
        # generating too: a plate of its own under the caller's over the same examples drew
        # batch x batch examples (or met "duplicate plate 'data'")
        with data_plate(batch, "DDPM"):
            x_t = pyro.sample(f"x_{T}", dist.Normal(zeros, 1.0).to_event(self.event_dim))
            for t in range(T, 1, -1):
                p = self.p_mean_logvar(x_t, t, **context)
                x_t = pyro.sample(f"x_{t - 1}", self._normal(p["mean"], p["log_var"]))
            p = self.p_mean_logvar(x_t, 1, **context)
            x_0 = pyro.sample("x_0", self.decoder(p["mean"], p["log_var"]), obs=x0)
            if x is None:
                # the draw in data space too (images: [0, 1] in the data's shape, where "x_0"
                # holds the model's [-1, 1] levels), named as a ScoreModel's generated site
                nd = len(self.event_shape)
                pyro.deterministic("x", self.from_model_space(x_0), event_dim=nd)
            return x_0

    def chain_guide(self, x: torch.Tensor, num_samples: int = 1) -> None:
        """Forward process :math:`q(x_T \\mid x_0) \\prod_t q(x_{t-1} \\mid x_t, x_0)`."""
        s, nd, T = self.schedule, self.event_dim, self.schedule.num_timesteps
        x0 = self.to_model_space(x, outer=True)
        check_outer_dims(x0, nd, type(self).__name__, time_plate=False)
        with data_plate(x0.shape[x0.dim() - nd - 1], "DDPM"):
            mean, std = s.q_mean_std(x0, self._times(T, x0), nd)
            x_t = pyro.sample(f"x_{T}", dist.Normal(mean, std).to_event(nd))
            for t in range(T, 1, -1):
                mean, log_var = s.q_posterior(x0, x_t, self._times(t, x0), nd)
                x_t = pyro.sample(f"x_{t - 1}", self._normal(mean, log_var))

    def sampler_options(self, x: torch.Tensor | None, sampler, sampler_kwargs) -> dict:
        """The checked ``sampler_kwargs`` of ``model(None, n, sampler=...)`` (see
        :meth:`generate`)."""
        options = check_sampler_choice(x, sampler, sampler_kwargs, GENERATORS, "DDPM")
        if x is None and sampler in (None, "ancestral") and set(options) - {"use_ema"}:
            raise ValueError(
                "DDPM.model(None, sampler='ancestral') runs the reverse chain as Pyro sites, "
                f"whose one setting is use_ema; got sampler_kwargs {sorted(options)} (DDIM's "
                "steps and eta: sampler='ddim')"
            )
        if options.get("use_ema") and self.ema is None:
            raise ValueError(
                "sampler_kwargs={'use_ema': True}: this DDPM keeps no EMA; build it with "
                "ema_decay=0.999 (say)"
            )
        return options

    def generate(
        self, num_samples: int, sampler: str, options: dict, context: dict
    ) -> torch.Tensor:
        """The generative program of ``model(None, num_samples, sampler=..., sampler_kwargs=
        {...})``: ``"ancestral"`` (the default) is :meth:`chain_model`, every step a Pyro site.
        Any other of :data:`GENERATORS` draws the prior site ``f"x_{T}"`` and carries it to
        the data end with that sampler (``"ddim"``: :func:`~pyro_gen.diffusion.ddim_sample`
        with ``steps``/``eta``; the score samplers through
        :class:`~pyro_gen.diffusion.DDPMScore`), recorded as a Delta site ``"x_0"`` (the
        model's space, as the chain's) and the deterministic ``"x"`` (data space). All use
        the network's current weights, as the chain always did; ``sampler_kwargs={"use_ema":
        True}`` draws with the EMA's, as :meth:`sample` does by default.

        Example:
            >>> from pyro_gen.diffusion import DDPM
            >>> from pyro_gen.nn.time_embedding import TimeMLP
            >>> m = DDPM(TimeMLP(2, 16, num_layers=1), (2,), timesteps=10)
            >>> draws = pyro.infer.Predictive(m.model, num_samples=2)(
            ...     None, 5, sampler="ddim", sampler_kwargs={"steps": 3})
            >>> draws["x"].shape, sorted(draws)
            (torch.Size([2, 5, 2]), ['x', 'x_0', 'x_10'])
        """
        options = dict(options)
        if options.pop("use_ema", False):
            with self.ema.average_parameters():
                return self.generate(num_samples, sampler, options, context)
        if sampler == "ancestral":
            return self.chain_model(None, num_samples, **context)
        from pyro_gen.diffusion.samplers import ddim_sample
        from pyro_gen.diffusion.score import DDPMScore
        from pyro_gen.diffusion.score_samplers import sample

        T, nd = self.schedule.num_timesteps, self.event_dim
        zeros = self.sample_reference().new_zeros(self.net_shape)
        with data_plate(num_samples, "DDPM"):
            x_T = pyro.sample(f"x_{T}", dist.Normal(zeros, 1.0).to_event(nd))
            # the samplers take one flat batch; outer plates' dims are restored after
            flat = x_T.reshape(-1, *self.net_shape)
            ctx = expand_context(context, x_T.shape[: x_T.dim() - nd])
            if sampler == "ddim":
                draws = ddim_sample(self, flat.shape[0], x_T=flat, context=ctx, **options)
            else:
                score = DDPMScore(self, use_ema=False)
                draws = sample(score, flat.shape[0], sampler, x_init=flat, context=ctx, **options)
            x_0 = self.to_model_space(draws).reshape(x_T.shape)
            # the sampler's output is an implicit distribution of x_T: a Delta site, as a
            # ScoreModel's generated example
            x_0 = pyro.sample("x_0", dist.Delta(x_0, event_dim=nd))
            pyro.deterministic("x", self.from_model_space(x_0), event_dim=len(self.event_shape))
            return x_0
