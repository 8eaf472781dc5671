"""training/Dockerfile cannot be built here (no Docker engine): its install steps must pin the
same versions as the training package, and its build context must leave infra and tests out."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAINING = REPO_ROOT / "training"
PIN = re.compile(r"(?<![\w.-])([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][\w.+-]*)")


def _dockerfile_lines() -> list[str]:
    text = (TRAINING / "Dockerfile").read_text()
    return [line for line in text.replace("\\\n", " ").splitlines() if not line.lstrip().startswith("#")]


def _image_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in _dockerfile_lines():
        if line.startswith("RUN") and "pip install" in line:
            for name, version in PIN.findall(line):
                assert name.lower() not in pins, f"{name} pinned twice in the Dockerfile"
                pins[name.lower()] = version
    return pins


IMAGE_EXTRAS = ("cluster",)
"""Extras the image installs: the scaler controller runs from the training image."""


def _package_requirements() -> list[Requirement]:
    project = tomllib.loads((TRAINING / "pyproject.toml").read_text())["project"]
    extras = [r for extra in IMAGE_EXTRAS for r in project["optional-dependencies"][extra]]
    return [Requirement(r) for r in project["dependencies"] + extras]


def test_image_pins_every_package_dependency_at_the_packages_version():
    pins = _image_pins()
    for requirement in _package_requirements():
        name = requirement.name.lower()
        assert name in pins, f"{name} is not pinned in training/Dockerfile"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"Dockerfile pins {name}=={pins[name]}, the package wants {requirement.specifier}")
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        if exact:
            assert pins[name] == exact[0]


def test_image_installs_nothing_the_package_does_not_declare():
    declared = {r.name.lower() for r in _package_requirements()}
    assert set(_image_pins()) == declared


def test_image_pins_match_the_repository_constraints():
    constraints = dict(PIN.findall((REPO_ROOT / "requirements" / "constraints.txt").read_text()))
    pins = _image_pins()
    for name, version in constraints.items():
        if name.lower() in pins:
            assert pins[name.lower()] == version, name


def test_every_pip_install_is_pinned_and_the_package_goes_in_without_dependencies():
    for line in _dockerfile_lines():
        if line.startswith("RUN") and "pip install" in line:
            for command in line.split("&&"):
                if "pip install" not in command:
                    continue
                words = [w for w in command.split("pip install", 1)[1].split() if not w.startswith("-")
                         and not w.startswith("${") and not w.startswith("http")]
                for word in words:
                    assert "==" in word or word == "/src/training", f"unpinned install: {word!r}"
                if "/src/training" in command:
                    assert "--no-deps" in command


def test_build_context_is_the_training_directory_and_keeps_infra_and_tests_out():
    text = (TRAINING / "Dockerfile").read_text()
    copies = [line.split()[1] for line in _dockerfile_lines() if line.startswith("COPY") and "--from" not in line]
    assert copies == ["pyproject.toml", "tensile"]
    for source in copies:
        assert (TRAINING / source).exists()
    assert "docker build -f training/Dockerfile" in text and text.count(" training/\n") >= 1
    ignored = (TRAINING / ".dockerignore").read_text()
    assert "**/__pycache__" in ignored
    # The image's user is the uid the job's pods run as.
    from infra.plan import job as job_plan

    assert "USER 10001:10001" in text
    assert job_plan._hardened_container()["runAsUser"] == 10001
    base = re.search(r"ARG CUDA_BASE=(\S+)", text).group(1)
    assert base.startswith("nvidia/cuda:") and ":latest" not in base
