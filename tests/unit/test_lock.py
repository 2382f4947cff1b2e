"""The lock: requirements/main.txt (the image) and requirements/dev.txt (`make dev`, `make
test`) pin every requirement of pyproject.toml at a version it allows, with hashes, and agree
with each other. `make` installs with --require-hashes and `pip check`, which proves the rest."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def pins(name: str) -> dict[str, tuple[str, int]]:
    """Each pinned package of a lock file: its version and how many hashes it carries."""
    text = (ROOT / "requirements" / name).read_text()
    found = {}
    for block in re.split(r"\n(?=\S)", text):
        match = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;\\]+)", block)
        if match:
            found[canonicalize_name(match[1])] = (match[2], block.count("--hash=sha256:"))
    return found


def requirements(*extras: str) -> list[Requirement]:
    """pyproject.toml's requirements with these extras, following `postroom[...]` inside."""
    wanted = [Requirement(r) for r in PROJECT["dependencies"]]
    todo = list(extras)
    while todo:
        for line in PROJECT["optional-dependencies"][todo.pop()]:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == PROJECT["name"]:
                todo.extend(requirement.extras)
            else:
                wanted.append(requirement)
    return wanted


@pytest.mark.parametrize(
    ("lock", "extras"), [("main.txt", ()), ("dev.txt", ("dev",))], ids=["main", "dev"]
)
def test_the_lock_pins_every_requirement_at_an_allowed_version_with_hashes(
    lock: str, extras: tuple[str, ...]
) -> None:
    pinned = pins(lock)
    assert pinned, f"requirements/{lock} pins nothing"
    for requirement in requirements(*extras):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement} is not in requirements/{lock}: run make lock"
        version, _ = pinned[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements/{lock} pins {name}=={version}, pyproject.toml wants {requirement}: "
            "run make lock"
        )
    unhashed = [name for name, (_, hashes) in pinned.items() if hashes == 0]
    assert unhashed == []


def test_the_build_lock_pins_what_builds_the_wheel() -> None:
    pinned = pins("build.txt")
    for line in PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(line)
        version, hashes = pinned[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version), (requirement, version)
        assert hashes > 0


def test_the_image_lock_has_no_local_infrastructure_and_dev_agrees_with_it() -> None:
    main, dev = pins("main.txt"), pins("dev.txt")
    for line in PROJECT["optional-dependencies"]["local"]:
        name = canonicalize_name(Requirement(line).name)
        assert name not in main, f"{name} would ship in the image"
        assert name in dev
    assert "pytest" not in main
    differ = {name: (main[name][0], dev[name][0]) for name in main if main[name] != dev.get(name)}
    assert differ == {}, "requirements/dev.txt must pin the image's packages at its versions"
