"""fit against Pyro's own SVI on the model/guide patterns of Pyro's test_valid_models.py.

Each row of the table is a model and guide written in plain Pyro (plates nested, non-nested,
subsampled by size and by the user's indices, sequential plates, ``poutine.scale`` and
``poutine.mask``, ``obs_mask``, ``pyro.factor``, ``pyro.deterministic``, site sets that
change between steps, Delta, reparameterized and score-function guide sites, enumeration in
guide and model, several ELBOs and particle settings, constrained params, no observed site,
``pyro.module`` networks, Pyro's autoguides). Each is trained for a few steps by ``fit`` on
its default path, which records the step into a compiled program, and by a hand-written
``SVI`` loop from the same seed and the same (empty) param store. After every step the
parameters must be Pyro's, modules' buffers too, and the losses ``fit`` reports must be the
losses ``SVI.step`` returned. Plain SGD is the main optimizer because its update is linear
in the gradient (Adam's first steps are invariant to a rescaled gradient, so they would hide
a missing scale); a few rows train with Adam, ``fit``'s fused update.

Each row also states the path the step must take, read from the ``"pyro_gen"`` log: recorded
and kept (then the recorded program must have taken every step after each signature's
first), or back to plain Pyro SVI with the logged reason. A fallback is fine when it says
why; a parameter that differs from Pyro's is a defect. A defect found this way is marked
``xfail(strict=True)`` (a row's ``marks``), its reason saying where the fault lies.

A second table checks ``evaluate_elbo`` against ``loss.loss`` and closed forms where both
estimate the same number without noise (Delta guides, enumerated sites, an exact posterior).

The package: ``case`` (a row), ``programs`` (the data and the programs several tables share),
``runner`` (the comparison); the tables by concept in ``test_plates``, ``test_sites``,
``test_losses`` and ``test_params_modules_autoguides``; ``test_evaluate_elbo``; and
``test_fit_options`` for fit's options (step callbacks, annealing, held-out evaluation).
"""
