import sys

from kdbench.commands import main

sys.exit(main())
