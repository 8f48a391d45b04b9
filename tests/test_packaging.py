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
