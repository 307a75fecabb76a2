"""`pip:PACKAGE/PATH` model references resolve to files an installed package ships."""

from __future__ import annotations

from pathlib import Path

import pytest

import msr
from msr.utils.resources import resolve


def test_pip_reference_resolves_without_importing() -> None:
    assert (
        Path(resolve("pip:msr/presets/tiny.yaml"))
        == Path(msr.__file__).parent / "presets" / "tiny.yaml"
    )
    assert Path(resolve("pip:msr")) == Path(msr.__file__).parent
    assert resolve("openai/clip-vit-large-patch14-336") == "openai/clip-vit-large-patch14-336"
    assert resolve("data/models/llm") == "data/models/llm"


def test_missing_package_or_file_names_it() -> None:
    with pytest.raises(
        FileNotFoundError, match=r"no installed package 'not_a_package'.*small-real"
    ):
        resolve("pip:not_a_package/x.onnx")
    with pytest.raises(FileNotFoundError, match=r"package 'msr' has no 'presets/nope\.yaml'"):
        resolve("pip:msr/presets/nope.yaml")
