"""The README's Python examples run as written (with fewer training steps)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the examples' files go
    code = BLOCKS[index].replace("steps=5000", "steps=10")
    exec(compile(code, f"README.md example {index + 1}", "exec"), {})


def test_the_readme_shows_the_generated_figure1_table():
    generated = README.parent / "docs" / "figure1" / "figure1.md"
    assert generated.read_text().strip() in README.read_text()


def test_the_estimators_doc_shows_the_generated_rate_distortion_table():
    docs = README.parent / "docs"
    generated = docs / "rate_distortion" / "rate_distortion.md"
    assert generated.read_text().strip() in (docs / "estimators.md").read_text()


def test_the_reproducing_doc_shows_the_generated_figure2_table():
    docs = README.parent / "docs"
    assert (docs / "figure2" / "figure2.md").read_text().strip() in (docs / "reproducing.md").read_text()
