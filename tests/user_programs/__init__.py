"""Programs a Pyro user writes (plain ``pyro.sample``, plates, ``pyro.module``; no pyro_gen
classes), kept here to check that pyro_gen's fit, guides, transforms and evaluation work
inside them unchanged (issue 10's acceptance programs).

Two groups of test files continue issue 10 with Pyro's own programs; each file's docstring
says what it adds and points here for what the group shares:

- Pyro's tutorials and examples (``test_tutorial_*.py``), each in plain Pyro as those write
  them: it trains with :func:`pyro_gen.infer.fit` and with Pyro's ``SVI`` loop, takes the
  guides users swap in without any edit to the model (hand-written,
  :class:`~pyro_gen.vae.AutoAmortizedNormal`, a flow guide on pyro_gen's IAF) and is scored
  by :func:`~pyro_gen.infer.evaluate_elbo` and :func:`~pyro_gen.infer.iwae_log_likelihood`.
  The options of ``fit`` a user reaches for (batch_size, a ``DataLoader``, the user's batch
  function, eval_data, checkpoints, compile on and off) are used on them.
- Pyro's examples that lean on other inference machinery (``test_pyro_example_*.py``):
  each is written in plain Pyro, trains with :func:`pyro_gen.infer.fit` and with Pyro's
  ``SVI``, and is scored with :func:`~pyro_gen.infer.evaluate_elbo` (and
  :func:`~pyro_gen.infer.iwae_log_likelihood` where the guide has a density).
"""
