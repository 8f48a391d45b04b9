"""kdbench's framework-free half: the spec, the data, the harness and the results.

Nothing in this package imports a deep-learning framework; each framework
lives in its own package under ``backends/`` and is imported only in the
process that runs one of its cells.
"""

__version__ = "0.1.0"
