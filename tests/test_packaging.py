"""The wheel installs one import name, kdbench, and everything it needs.

Built for real with pip (no dependencies, no network), then read as a zip.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (wheel,) = out.glob("kdbench-*.whl")
    return zipfile.ZipFile(wheel).namelist()


def packages_in_tree() -> set[str]:
    """Every package folder of the source tree, by the import name it installs as."""
    found = set()
    for root, name in ((REPO / "kdbench", "kdbench"), (REPO / "backends", "kdbench.backends")):
        for init in root.rglob("__init__.py"):
            parts = init.parent.relative_to(root).parts
            found.add(".".join((name, *parts)))
    return found


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_name(wheel_names: list[str]) -> None:
    top = {n.split("/")[0] for n in wheel_names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"kdbench"}


@pytest.mark.slow
def test_every_package_and_the_builtin_files_are_in_the_wheel(wheel_names: list[str]) -> None:
    inits = {n.removesuffix("/__init__.py").replace("/", ".") for n in wheel_names}
    missing = packages_in_tree() - inits
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    for folder, package in (("specs", "specs"), ("matrices", "matrices")):
        shipped = {Path(n).name for n in wheel_names if n.startswith(f"kdbench/{package}/")}
        in_tree = {p.name for p in (REPO / "benchmarks" / folder).glob("*.toml")}
        assert in_tree and in_tree <= shipped
    assert not [n for n in wheel_names if "conftest" in n or "/test_" in n or "oracles" in n]


# The frameworks come with the extras; each is imported by its own backend package only.
FRAMEWORK_FOLDERS = {
    "torch": "pytorch",
    "tensorflow": "tensorflow",
    "jax": "jax",
    "jaxlib": "jax",
    "flax": "jax",
    "optax": "jax",
}


# The cluster executors' packages: each extra's, imported only by its executor.
EXECUTOR_MODULES = {
    "ray": ("ray", "kdbench/runner/executors/ray_cluster.py"),
    "submitit": ("slurm", "kdbench/runner/executors/slurm_jobs.py"),
}


def third_party_imports(root: Path) -> dict[str, set[str]]:
    """Top-level names imported anywhere under root that are neither stdlib nor kdbench."""
    import ast

    found: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "kdbench":
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_a_declared_dependency() -> None:
    """An import that only works because a framework pulled it in breaks one-framework installs
    (filelock came with torch, so a JAX-only install could not run anything)."""
    import re
    from importlib.metadata import packages_distributions

    try:
        import tomllib
    except ImportError:  # Python 3.10: the tomli backport, a dependency there
        import tomli as tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def dist(requirement: str) -> str:
        return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    core = {dist(r) for r in project["dependencies"]}
    owners = packages_distributions()
    undeclared = []
    for root in (REPO / "kdbench", REPO / "backends"):
        for module, files in sorted(third_party_imports(root).items()):
            if module in FRAMEWORK_FOLDERS:
                folder = f"backends/{FRAMEWORK_FOLDERS[module]}/"
                outside = {f for f in files if not f.startswith(folder)}
                assert not outside, f"{module} imported outside {folder}: {outside}"
                continue
            if module in EXECUTOR_MODULES:  # optional: imported by its executor alone
                extra, where = EXECUTOR_MODULES[module]
                assert files == {where}, f"{module} imported outside {where}: {files}"
                declared = {dist(r) for r in project["optional-dependencies"][extra]}
                assert module in declared, f"{module} is missing from the extra {extra!r}"
                continue
            dists = {d.lower().replace("_", "-") for d in owners.get(module, [module])}
            if not dists & core:
                undeclared.append(f"{module} ({', '.join(sorted(files))})")
    assert not undeclared, f"add to [project] dependencies in pyproject.toml: {undeclared}"
