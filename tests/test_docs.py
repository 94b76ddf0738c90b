"""Docs stay true: the generated spec reference is current and bundled specs validate."""

import subprocess
import sys
from pathlib import Path

import pytest

from widthwise.spec import bundled_specs, load_spec
from widthwise.spec_doc import BEGIN, END, spec_reference

ROOT = Path(__file__).resolve().parents[1]


def test_spec_reference_is_current():
    # a fresh interpreter: test modules may have registered test-only entries here
    fresh = subprocess.run(
        [sys.executable, "-m", "widthwise.spec_doc"], capture_output=True, text=True, check=True
    ).stdout
    text = (ROOT / "docs" / "spec.md").read_text()
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert block.strip() == fresh.strip(), (
        "docs/spec.md is stale: run python -m widthwise.spec_doc --write docs/spec.md"
    )
    assert spec_reference().count("### `mlp`") == 1


def test_every_top_level_key_is_documented():
    from widthwise.spec import StudySpec

    text = (ROOT / "docs" / "spec.md").read_text()
    for key in StudySpec.model_fields:
        assert f"`{key}`" in text


@pytest.mark.parametrize("name", sorted(bundled_specs()))
def test_bundled_spec_validates(name):
    spec = load_spec(name)
    assert spec.name == name
    assert spec.description


def test_readme_has_exactly_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```bash\n")[1:]]
    assert len(blocks) == 2
    assert "widthwise run quickstart" in blocks[0]
    assert "pytest" in blocks[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci, ".ci/run must run the README's test command verbatim"
