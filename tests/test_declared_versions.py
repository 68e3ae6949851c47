"""Declared versions are tested versions: the pins that `make test-floor` and `make test-gpu-image`
install agree with the ranges in pyproject.toml.

- requirements/floor.txt pins every `>=` bound of the project's dependencies (and of the extras'
  packages it names) to exactly that bound, so the floors are the versions a test run installs;
- requirements/gpu-image.txt (the GPU machines' image) lies inside every declared range.
"""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before Python 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FLOOR = ROOT / "requirements" / "floor.txt"
GPU_IMAGE = ROOT / "requirements" / "gpu-image.txt"


def declared(pyproject: str) -> tuple[list[Requirement], list[Requirement]]:
    """The project's dependencies and, apart, every extra's requirements."""
    project = tomllib.loads(pyproject)["project"]
    extras = [r for group in project.get("optional-dependencies", {}).values() for r in group]
    return [Requirement(r) for r in project["dependencies"]], [Requirement(r) for r in extras]


def pins(text: str) -> dict[str, Version]:
    """``name==version`` lines of a constraints file, by canonical name (comments skipped)."""
    found: dict[str, Version] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            found[canonicalize_name(name)] = Version(version)
    return found


def floors(requirements: list[Requirement]) -> list[tuple[str, Version]]:
    """Each requirement's ``>=`` bound, with its canonical name."""
    return [
        (canonicalize_name(r.name), Version(s.version))
        for r in requirements
        for s in r.specifier
        if s.operator == ">="
    ]


def floor_drift(pyproject: str, constraints: str) -> list[str]:
    """How the floor pins and pyproject's ``>=`` bounds disagree (empty when they agree).

    Every dependency's floor must be pinned; a pinned extra (bitsandbytes, accelerate) must be
    pinned at its floor in every extra that names it; nothing may be pinned that pyproject does
    not bound from below."""
    dependencies, extras = declared(pyproject)
    pinned = pins(constraints)
    drift = [f"{n}>={v} is not pinned" for n, v in floors(dependencies) if n not in pinned]
    for name, version in floors(dependencies) + floors(extras):
        if name in pinned and pinned[name] != version:
            drift.append(
                f"{name}=={pinned[name]} is pinned but pyproject.toml declares >={version}"
            )
    bounded = {name for name, _ in floors(dependencies) + floors(extras)}
    drift += [
        f"{n}=={v} is pinned but pyproject.toml declares no floor"
        for n, v in pinned.items()
        if n not in bounded
    ]
    return drift


def test_the_floor_pins_are_the_declared_floors() -> None:
    assert floor_drift((ROOT / "pyproject.toml").read_text(), FLOOR.read_text()) == []


def test_a_floor_raised_in_pyproject_alone_is_reported() -> None:
    pyproject = '[project]\ndependencies = ["torch>=2.6", "peft>=0.14"]\n'
    assert floor_drift(pyproject, "torch==2.6\npeft==0.14\n") == []
    assert floor_drift(pyproject, "torch==2.6\npeft==0.13\n") == [
        "peft==0.13 is pinned but pyproject.toml declares >=0.14"
    ]
    assert floor_drift(pyproject, "torch==2.6\n") == ["peft>=0.14 is not pinned"]
    assert floor_drift(pyproject, "torch==2.6\npeft==0.14\nnumpy==2.0\n") == [
        "numpy==2.0 is pinned but pyproject.toml declares no floor"
    ]
    two_extras = pyproject + '[project.optional-dependencies]\ngpu = ["bitsandbytes>=0.45"]\n'
    two_extras += 'dev = ["bitsandbytes>=0.50"]\n'
    assert floor_drift(two_extras, "torch==2.6\npeft==0.14\nbitsandbytes==0.50\n") == [
        "bitsandbytes==0.50 is pinned but pyproject.toml declares >=0.45"
    ]


def test_the_gpu_image_versions_lie_in_the_supported_range() -> None:
    dependencies, extras = declared((ROOT / "pyproject.toml").read_text())
    image = pins(GPU_IMAGE.read_text())
    checked = 0
    for requirement in dependencies + extras:
        version = image.get(canonicalize_name(requirement.name))
        if version is not None:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"the GPU image's {requirement.name}=={version} is outside {requirement}"
            )
            checked += 1
    assert checked >= 4  # torch, transformers, lightning, safetensors at least
