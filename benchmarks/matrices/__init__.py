"""The built-in matrices, installed as the package data kdbench.matrices."""
