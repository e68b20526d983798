"""The threat model, written once: ``threat_model.md`` beside this module.

``medheaven report`` prints it (as an :class:`~medheaven.report.document.Outline`), README.md's "Threat model"
section is the same text between ``<!-- threat-model -->`` markers, and docs quote whole bullets of it between
the same markers; ``tests/test_report_threat_model.py`` fails when any of them drifts from this file.

The file is a Markdown list two levels deep: ``- `` opens a bullet, ``  - `` a sub-bullet, and continuation
lines are indented to the bullet's text (two spaces, four under a sub-bullet).
"""

from __future__ import annotations

from importlib import resources

from medheaven.report.document import Outline, OutlineItem

RESOURCE = "threat_model.md"


def threat_model_text() -> str:
    return resources.files(__package__).joinpath(RESOURCE).read_text(encoding="utf-8")


def parse_outline(text: str, *, source: str = RESOURCE) -> Outline:
    """The two-level bullet list of ``text``; a line of any other shape is refused, naming it."""
    items: list[OutlineItem] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        last = items[-1] if items else None
        if line.startswith("- "):
            items.append(OutlineItem(line[2:].strip()))
        elif line.startswith("  - ") and last is not None:
            items[-1] = OutlineItem(last.text, (*last.children, line[4:].strip()))
        elif line.startswith("    ") and last is not None and last.children:
            items[-1] = OutlineItem(last.text, (*last.children[:-1], f"{last.children[-1]} {line.strip()}"))
        elif line.startswith("  ") and not line.startswith("   ") and last is not None and not last.children:
            items[-1] = OutlineItem(f"{last.text} {line.strip()}", last.children)
        else:
            raise ValueError(
                f"{source} line {number} is neither a bullet ('- '), a sub-bullet ('  - ') nor a continuation "
                f"indented to its bullet's text: {line!r}"
            )
    return Outline(tuple(items))


def threat_model_outline() -> Outline:
    return parse_outline(threat_model_text())
