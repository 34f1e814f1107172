"""Fixtures for the data tests: tiny image folders written with PIL into tmp_path."""
from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import write_image


@pytest.fixture
def make_folder(tmp_path):
    """make_folder({"cat": 5, "dog": 3}, sub="train") -> root with <root>/<sub>/<class>/<i>.png files."""

    def make(counts: dict[str, int], sub: str = "", root: Path | None = None, ext: str = ".png") -> Path:
        root = root or tmp_path / "imgs"
        for k, (name, count) in enumerate(sorted(counts.items())):
            for i in range(count):
                size = (12 + i % 3, 10 + (i * 7) % 5)  # mixed sizes and aspect ratios
                write_image(root / sub / name / f"{i:03d}{ext}", size, colour=(20 * k + i, 100, 250 - 9 * i))
        return root

    return make
