"""The threat model has one source, ``medheaven/report/threat_model.md``: ``medheaven report`` prints it, README.md's
"Threat model" section is the same text, and docs quote whole bullets of it. Every copy is marked
``<!-- threat-model ... -->`` ... ``<!-- /threat-model -->``; these tests fail when a copy drifts from the source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medheaven.report.document import Outline, OutlineItem, to_html, to_markdown
from medheaven.report.threat_model import parse_outline, threat_model_outline, threat_model_text

ROOT = Path(__file__).resolve().parents[1]
MARKED = re.compile(r"^<!-- threat-model\b[^\n]*-->\n(.*?)^<!-- /threat-model -->$", re.MULTILINE | re.DOTALL)
SECTION = re.compile(r"^## Threat model\n(.*?)(?=^## )", re.MULTILINE | re.DOTALL)


def _bullets(text: str) -> list[str]:
    """Top-level bullets, each with its continuation lines and sub-bullets, exactly as written."""
    return [f"- {chunk}".rstrip("\n") for chunk in re.split(r"^- ", text, flags=re.MULTILINE) if chunk.strip()]


def readme_problems(readme: str, source: str) -> list[str]:
    section = SECTION.search(readme)
    if section is None:
        return ['README.md has no "## Threat model" section']
    quotes = MARKED.findall(section.group(1))
    if len(quotes) != 1:
        return [f'README.md\'s "Threat model" section holds {len(quotes)} marked copies of the threat model, not 1']
    outside = MARKED.sub("", section.group(1)).strip()
    problems = (
        [f'README.md\'s "Threat model" section says more than the threat model: {outside[:80]!r}'] if outside else []
    )
    if quotes[0] != source:
        problems.append(
            'README.md\'s "Threat model" section differs from medheaven/report/threat_model.md: change the .md file '
            "and copy it between the markers"
        )
    return problems


def quote_problems(name: str, text: str, source: str) -> list[str]:
    whole = _bullets(source)
    return [
        f"{name} quotes a threat-model bullet that medheaven/report/threat_model.md does not hold: {bullet[:80]!r}"
        for quote in MARKED.findall(text)
        for bullet in _bullets(quote)
        if bullet not in whole
    ]


def _docs() -> dict[str, str]:
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8") for path in paths}


def test_threat_model_readme_section_is_the_source() -> None:
    assert readme_problems((ROOT / "README.md").read_text(encoding="utf-8"), threat_model_text()) == []


def test_threat_model_docs_quote_whole_bullets_of_the_source() -> None:
    docs = _docs()
    assert MARKED.search(docs["docs/deployment.md"]), "the key hand-over quotes the shared-key bullet"
    for name, text in docs.items():
        assert quote_problems(name, text, threat_model_text()) == []


def test_threat_model_checks_report_a_copy_that_drifted() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    source = threat_model_text()
    edited = readme.replace("folds each hospital at most once per round", "folds each hospital once", 1)
    assert edited != readme
    assert any("differs from medheaven/report/threat_model.md" in p for p in readme_problems(edited, source))
    added = readme.replace("<!-- /threat-model -->\n", "<!-- /threat-model -->\n\nAlso, hospitals never collude.\n", 1)
    assert any("says more than the threat model" in p for p in readme_problems(added, source))
    deployment = _docs()["docs/deployment.md"]
    drifted = deployment.replace("that key opens only\n  sums", "that key opens\n  anything", 1)
    assert drifted != deployment
    assert quote_problems("docs/deployment.md", drifted, source)


def test_threat_model_outline_keeps_every_word_of_the_source() -> None:
    outline = threat_model_outline()
    assert len(outline.items) == len(_bullets(threat_model_text())) >= 6
    assert sum(len(item.children) for item in outline.items) >= 4  # what each party can learn under bfv-masked
    assert to_markdown([outline]).split() == threat_model_text().split()


def test_threat_model_renders_nested_bullets_and_emphasis_in_html() -> None:
    html = to_html([threat_model_outline()], title="t")
    assert "<em>honest-but-curious</em>" in html
    assert "<strong>All hospitals share one secret key</strong>" in html
    assert "<em>a key holder (any hospital, or anyone with a copy of <code>context.secret</code>)" in html
    assert html.count("<ul>") == 2 and "</li></ul></li>" in html


def test_threat_model_parser_reads_continuations_and_refuses_other_lines() -> None:
    outline = parse_outline("- a\n  b\n  - c\n    d\n- e\n")
    assert outline == Outline((OutlineItem("a b", ("c d",)), OutlineItem("e")))
    with pytest.raises(ValueError, match=r"x\.md line 2 .*'plain'"):
        parse_outline("- a\nplain\n", source="x.md")
    with pytest.raises(ValueError, match="line 3"):
        parse_outline("- a\n  - b\n  c\n")  # text after a sub-bullet would belong to neither
