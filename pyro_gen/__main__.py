"""``python -m pyro_gen`` runs the ``pyro-gen`` command."""

from __future__ import annotations

import sys

from pyro_gen.cli import main

sys.exit(main())
