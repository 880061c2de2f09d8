"""``python -m oeleo`` is the ``oeleo`` command."""

import sys

from oeleo.cli import main

sys.exit(main())
