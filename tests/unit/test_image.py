"""The image: every process's package, installed (not editable) from the hashed lock, with
none of the local-infrastructure wheels, in a final stage that holds only the environment."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def stages() -> list[str]:
    return re.split(r"^FROM ", DOCKERFILE, flags=re.MULTILINE)[1:]


def test_the_build_stage_installs_every_package_from_the_lock_and_not_editable() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    build, final = stages()
    for package in packages:
        assert f"COPY {package}/ {package}/" in build, package
    assert "COPY requirements/main.txt requirements/build.txt" in build
    assert "python -m venv --without-pip /opt/postroom" in build
    # Nothing is fetched unchecked: every download is a hashed lock line; the wheel is built
    # with the locked setuptools (no build isolation, which would fetch its own).
    commands = re.sub(r"\\\n\s*", "", build)
    installs = re.findall(r"pip (?:--python \S+ )?(?:install|wheel) [^&\n]*", commands)
    assert len(installs) == 4, installs
    for install in installs:
        assert "--require-hashes -r" in install or "--no-deps" in install, install
    assert "pip wheel --no-deps --no-build-isolation" in commands
    assert "install --no-deps /tmp/dist/postroom-" in commands
    assert " -e " not in DOCKERFILE
    # The final stage copies the environment only: no source tree, no pip install.
    assert "COPY --from=build /opt/postroom /opt/postroom" in final
    assert "pip install" not in final
    assert not re.search(r"^COPY (?!--from)", final, flags=re.MULTILINE)


def test_every_process_listens_on_all_interfaces_and_has_a_health_check() -> None:
    final = stages()[-1]
    for setting in ("API_HOST", "NOTIFIER_HOST", "RELAY_METRICS_HOST", "SANDBOX_HOST"):
        assert f"{setting}=0.0.0.0" in final, setting
    assert 'CMD ["python", "-m", "postroom.healthcheck"]' in final
    assert "USER postroom" in final
