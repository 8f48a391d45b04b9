"""``python -m kdbench.tools.overhead``."""

import sys

from kdbench.tools.overhead.cli import main

sys.exit(main())
