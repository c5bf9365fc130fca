"""One version number for a release (docs/releasing.md): pyproject.toml, the newest numbered
CHANGELOG heading and the Kubernetes overlays' image tags agree, and the CHANGELOG's numbered
releases are in descending order."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _version() -> str:
    import tomllib  # Python 3.11+, as the tests run (the package supports 3.10)

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _released() -> list[tuple[int, ...]]:
    headings = re.findall(r"^## (\d+)\.(\d+)\.(\d+)\s*$", (ROOT / "CHANGELOG.md").read_text(), re.M)
    return [tuple(map(int, h)) for h in headings]


def test_changelog_newest_release_is_the_package_version():
    released = _released()
    assert released, "CHANGELOG.md has no numbered release heading (## X.Y.Z)"
    assert released == sorted(released, reverse=True), f"releases out of order: {released}"
    assert ".".join(map(str, released[0])) == _version()


def test_overlay_image_tags_carry_the_package_version():
    version = _version()
    for flavour in ("cpu", "gpu"):
        kustomization = yaml.safe_load((ROOT / "deploy" / "overlays" / flavour / "kustomization.yaml").read_text())
        tags = [image["newTag"] for image in kustomization["images"] if image["name"] == "tcm-serve"]
        assert tags == [f"{version}-{flavour}"], (flavour, tags)


def test_the_release_steps_are_written_down():
    text = (ROOT / "docs" / "releasing.md").read_text()
    for needle in ("pyproject.toml", "CHANGELOG.md", "newTag", "git tag -a v"):
        assert needle in text, needle
