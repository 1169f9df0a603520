"""The README is the front page and docs/ the manual: every relative link in them points at a file (and heading) that
exists, the README opens with the two set-up commands, and every docs page is reachable from the README."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
DOCS = [README, *PAGES]

# The two commands a newcomer types on a fresh machine (.ci/run runs the second): kept byte for byte.
SETUP = [
    'pip install -e ".[datasets]" && diabetica-jax run configs/recipes/demo.yaml --run-dir runs/demo   '
    "# the whole pipeline: 9.3 min, 2.2 GB on 2 CPU cores",
    'pip install -e ".[test]" && python -m pytest tests -n 2                                   '
    "# the test suite (CPU, 8 emulated devices)",
]


def _prose(text: str) -> str:
    """The text with fenced blocks and inline code blanked (offsets kept): links there are examples, not links."""
    text = re.sub(r"^```.*?^```", lambda m: re.sub(r"[^\n]", " ", m.group()), text, flags=re.M | re.S)
    return re.sub(r"(?<!`)`[^`\n]+`(?!`)", lambda m: " " * len(m.group()), text)


def _links(doc: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link and image in the prose of `doc`."""
    text = doc.read_text(encoding="utf-8")
    prose = _prose(text)
    found = []
    for match in re.finditer(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose):
        found.append((prose.count("\n", 0, match.start()) + 1, match.group(1)))
    for match in re.finditer(r"<img\s[^>]*src=\"([^\"]+)\"", prose):
        found.append((prose.count("\n", 0, match.start()) + 1, match.group(1)))
    return found


def _anchors(doc: Path) -> set[str]:
    """The anchors GitHub gives the headings of `doc`: lower case, punctuation dropped, spaces to hyphens, repeats
    numbered."""
    anchors, seen = set(), {}
    for line in _prose(doc.read_text(encoding="utf-8")).splitlines():
        if match := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line):
            title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))
            slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _params():
    for doc in DOCS:
        for line, target in _links(doc):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            yield pytest.param(doc, target, id=f"{doc.relative_to(REPO)}:{line} {target}")


def test_links_were_found():
    targets = {(doc.name, target) for doc in DOCS for _, target in _links(doc)}
    assert ("README.md", "docs/curate.md") in targets
    assert ("serve.md", "serve_page.png") in targets


@pytest.mark.parametrize("doc, target", _params())
def test_relative_link_exists(doc, target):
    path, _, anchor = target.partition("#")
    file = (doc.parent / path).resolve() if path else doc
    assert file.exists(), f"{doc.relative_to(REPO)}: {target}: no such file {file}"
    assert file == REPO or REPO in file.parents, f"{doc.relative_to(REPO)}: {target} points outside the repository"
    if anchor and file.suffix == ".md":
        assert anchor in _anchors(file), f"{doc.relative_to(REPO)}: {target}: {file.name} has no heading #{anchor}"


def test_readme_opens_with_the_setup_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    first_block = next(i for i, line in enumerate(lines) if line.startswith("```"))
    assert first_block < 15, "the set-up commands must be among the README's first lines"
    assert lines[first_block] == "```bash"
    assert lines[first_block + 1: first_block + 4] == [*SETUP, "```"]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert "python3 -m pytest tests -n 2\n" in ci and '-e ".[test]"' in ci


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / target.partition("#")[0]).resolve() for _, target in _links(README)}
    assert {"curate.md", "train.md", "evaluate.md", "export.md", "serve.md", "configuration.md", "performance.md",
            "reliability.md", "testing.md", "limitations.md"} <= {p.name for p in PAGES}
    assert not [p.name for p in PAGES if p.resolve() not in linked]


def test_generated_blocks_live_in_their_pages():
    """The config reference (tests/train/test_train_config.py) and the fault table (bench/faults.py) each have one home."""
    for marker, page in (("config-reference", "configuration.md"), ("faults-table", "reliability.md")):
        holders = [doc.name for doc in DOCS if f"<!-- {marker}:start -->" in doc.read_text(encoding="utf-8")]
        assert holders == [page], f"<!-- {marker}:start --> is in {holders}, expected docs/{page} only"
        assert f"<!-- {marker}:end -->" in (REPO / "docs" / page).read_text(encoding="utf-8")
