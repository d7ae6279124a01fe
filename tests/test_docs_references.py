"""The documentation's references resolve: every relative link in README.md and docs/ points
at a file that exists, and so does every results file, plot, script or model folder the
text names as the source of a number (model folders: outside the runs' plans, which also
name the ones their commands would write). A claim whose results file was renamed or never
committed can no longer be checked, so this fails instead of letting the docs drift.

Paths with a one-letter capital placeholder (`docs/results/heldout/R.json`, `select-movie-resA-...`)
are command templates, not files, and are skipped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
NAMED_PATH = re.compile(
    r"(?<![\w/.$-])((?:docs|benchmarks|models)/[A-Za-z0-9_./-]*[A-Za-z0-9_-]"
    r"\.(?:jsonl|json|md|png|sh|py))\b"
)
MODEL_FOLDER = re.compile(r"`(models/[A-Za-z0-9_.-]+)/?`")
PLACEHOLDER = re.compile(r"(?:^|[-_/a-z])[A-Z](?:[-_.]|$)")


def relative_links(text: str) -> list[str]:
    targets = (m.group(1).split("#")[0] for m in LINK.finditer(text))
    return [t for t in targets if t and not re.match(r"[a-z]+:", t)]


def named_paths(text: str, *, models: bool = True) -> list[str]:
    found = NAMED_PATH.findall(text) + (MODEL_FOLDER.findall(text) if models else [])
    return [p for p in found if not PLACEHOLDER.search(p)]


def is_plan(doc: Path) -> bool:
    """A run's plan (docs/results/*/README.md) names the model folders its commands would
    write, kept or not; the user-facing docs name only shipped ones."""
    return doc.parent.parent.name == "results"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    missing = [t for t in relative_links(doc.read_text()) if not (doc.parent / t).exists()]
    assert not missing, f"{doc.name} links to missing files: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_results_file_exists(doc: Path) -> None:
    named = named_paths(doc.read_text(), models=not is_plan(doc))
    missing = sorted({p for p in named if not (ROOT / p).exists()})
    assert not missing, f"{doc.name} names files that are not in the repository: {missing}"


@pytest.mark.parametrize(
    ("text", "links", "paths"),
    [
        ("[plot](docs/a.png), [site](https://x.org/a.png)", ["docs/a.png"], ["docs/a.png"]),
        ("`recsys eval --out docs/results/heldout/lm.json`", [], ["docs/results/heldout/lm.json"]),
        ("log: `docs/results/run.log.jsonl`, [here](#anchor)", [], ["docs/results/run.log.jsonl"]),
        ("--out docs/results/heldout/R.json, docs/results/select-resA-150.json", [], []),
        ("docs/results/LTR.json", [], ["docs/results/LTR.json"]),
        ("served by `models/hybrid-rec-movie-dagger`", [], ["models/hybrid-rec-movie-dagger"]),
        ("$H/served.json and ../docs/x.json", [], []),
    ],
)
def test_the_scanner_finds_links_and_paths_and_skips_templates(
    text: str, links: list[str], paths: list[str]
) -> None:
    assert relative_links(text) == links
    assert named_paths(text) == paths
