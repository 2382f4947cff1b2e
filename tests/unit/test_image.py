"""The one image holds every process's package."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_dockerfile_copies_every_package_the_project_ships() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in packages:
        assert f"COPY {package}/ {package}/" in dockerfile, package
        assert f"{package}/__init__.py" in dockerfile, package


def test_every_process_listens_on_all_interfaces_and_has_a_health_check() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for setting in ("API_HOST", "NOTIFIER_HOST", "RELAY_METRICS_HOST", "SANDBOX_HOST"):
        assert f"{setting}=0.0.0.0" in dockerfile, setting
    assert 'CMD ["python", "-m", "postroom.healthcheck"]' in dockerfile
