"""The documentation holds together: every relative link in the markdown pages reaches a file
of the repository (and a heading, when it names one), no page shows a machine's absolute path,
and docs/spec.md's worked mask examples are what `attention_mask` computes."""

import glob
import os
import re

import numpy as np
import pytest

import phd_jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(
    os.path.relpath(p, REPO)
    for pattern in ("*.md", "docs/*.md", "benchmarks/README.md")
    for p in glob.glob(os.path.join(REPO, pattern))
)
RESULTS = sorted(
    os.path.relpath(p, REPO)
    for ext in ("md", "json")
    for p in glob.glob(os.path.join(REPO, "benchmarks", "results", "**", f"*.{ext}"), recursive=True)
)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text):
    """The text outside fenced code blocks (links in code are not links)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path):
    text = _prose(open(path, encoding="utf-8").read())
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_the_pages_exist():
    for page in ("README.md", "docs/spec.md", "docs/architecture.md", "benchmarks/README.md", "CHANGELOG.md"):
        assert page in PAGES, page


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    text = _prose(open(os.path.join(REPO, page), encoding="utf-8").read())
    here = os.path.dirname(os.path.join(REPO, page))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(here, path)) if path else os.path.join(REPO, page)
        if not (full + os.sep).startswith(REPO + os.sep):
            broken.append(f"{target} (outside the repository)")
        elif not os.path.exists(full):
            broken.append(f"{target} (no such file)")
        elif anchor and full.endswith(".md") and anchor not in _anchors(full):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page}: " + ", ".join(broken)


@pytest.mark.parametrize("page", PAGES + RESULTS)
def test_no_machine_paths(page):
    text = open(os.path.join(REPO, page), encoding="utf-8").read()
    hits = re.findall(r"(?<![\w.])/(?:work|root|tmp|home)/\S*", text)
    assert not hits, f"{page} shows machine paths: {hits}"


def _spec_matrices():
    text = open(os.path.join(REPO, "docs", "spec.md"), encoding="utf-8").read()
    return re.findall(r"```\n( +O0 .*?)```", text, flags=re.S)


@pytest.mark.parametrize(("index", "variant", "window"), [(0, "phd", 0), (1, "phd_swa", 2)])
def test_spec_worked_examples_are_the_mask(index, variant, window):
    lines = _spec_matrices()[index].strip("\n").splitlines()
    shown = np.array([[c == "1" for c in line.split()[1:]] for line in lines[1:]])
    np.testing.assert_array_equal(shown, phd_jax.attention_mask(variant, 3, 3, window=window))
