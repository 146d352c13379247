"""Programs a Pyro user writes (plain ``pyro.sample``, plates, ``pyro.module``; no pyro_gen
classes), kept here to check that pyro_gen's fit, guides, transforms and evaluation work
inside them unchanged (issue 10's acceptance programs)."""
