"""``python -m clustervm``: see :mod:`clustervm.cli`."""
from .cli import main

raise SystemExit(main())
