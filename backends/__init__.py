"""One package per framework, all to the contract in ``kdbench.backends.base``.

Nothing here imports a framework: ``kdbench.backends.base.get_backend`` imports a
backend's package only when a cell asks for it, so a machine with one
framework installed still runs that framework's cells.
"""
