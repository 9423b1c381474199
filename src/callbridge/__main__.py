"""``python -m callbridge``: the same as the ``callbridge`` command."""

from ._cli import main

raise SystemExit(main())
