"""The built-in specs, installed as the package data kdbench.specs."""
