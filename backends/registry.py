"""Which backends exist, whether their framework is installed, and loading one.

Nothing here imports a framework: `get_backend` imports a backend's package
only when a cell asks for it, so a machine with one framework runs its cells.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import TYPE_CHECKING

from kdbench.errors import KdbenchError

if TYPE_CHECKING:
    from kdbench.backends.base import Backend

# name -> (module holding the Backend subclass, class name, import names it needs)
REGISTRY: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "pytorch": ("kdbench.backends.pytorch.backend", "PyTorchBackend", ("torch",)),
    "tensorflow": ("kdbench.backends.tensorflow.backend", "TensorFlowBackend", ("tensorflow",)),
    "jax": ("kdbench.backends.jax.backend", "JaxBackend", ("jax", "flax", "optax")),
}
# More backends, outside kdbench: "name=module:Class,..." (the cells' processes
# inherit it). The tests use it for a stub backend whose cells take a second.
PLUGINS_ENV = "KDBENCH_BACKENDS"

INSTALL_HINT = {
    "pytorch": "pip install 'kdbench[torch]'",
    "tensorflow": "pip install 'kdbench[tensorflow]'",
    "jax": "pip install 'kdbench[jax]'",
}


def registry() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """The built-in backends, then those named in $KDBENCH_BACKENDS."""
    entries = dict(REGISTRY)
    for item in os.environ.get(PLUGINS_ENV, "").split(","):
        if not item.strip():
            continue
        name, _, target = item.partition("=")
        module, _, cls = target.partition(":")
        if not (name.strip() and module.strip() and cls.strip()):
            raise KdbenchError(
                f"${PLUGINS_ENV}: {item!r} is not name=module:Class (several: comma-separated)"
            )
        entries[name.strip()] = (module.strip(), cls.strip(), ())
    return entries


def backend_names() -> list[str]:
    return list(registry())


def is_installed(name: str) -> bool:
    """Whether the framework can be imported, without importing it."""
    module, _, needs = registry()[name]
    if not all(importlib.util.find_spec(n) is not None for n in needs):
        return False
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the backend's package itself is missing
        return False


def installed_backends() -> list[str]:
    return [name for name in registry() if is_installed(name)]


def check_backend(name: str) -> None:
    """One-line errors for an unknown or missing backend."""
    names = registry()
    if name not in names:
        raise KdbenchError(f"unknown backend {name!r}; allowed: {', '.join(names)}")
    if not is_installed(name):
        hint = INSTALL_HINT.get(name, f"make {names[name][0]} importable")
        raise KdbenchError(f"backend {name!r} is not installed here; install it with {hint}")


def get_backend(name: str) -> Backend:
    """Import one backend's package (and so its framework) and instantiate it."""
    check_backend(name)
    module, cls, _ = registry()[name]
    return getattr(importlib.import_module(module), cls)()
