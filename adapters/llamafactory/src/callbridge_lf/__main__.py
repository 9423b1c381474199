"""``python -m callbridge_lf train file.yaml``: the same as ``callbridge-lf``."""

import sys

from ._cli import main

sys.exit(main())
