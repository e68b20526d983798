"""The part of Drive v2's ``q`` search language that the test double of Drive (``drive_server``) understands.

    expr   := term ('or' term)*
    term   := factor ('and' factor)*
    factor := 'not' factor | '(' expr ')' | clause
    clause := STRING 'in' 'parents'
            | ('title' | 'mimeType') ('=' | '!=' | 'contains') STRING
            | 'trashed' ('=' | '!=') ('true' | 'false')

Strings are single-quoted with ``\\'`` and ``\\\\`` escapes. Title comparisons ignore case, as Drive's do.
Anything else raises ``QueryError`` (the server answers 400), so a client relying on more is caught in tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]

_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^'\\]|\\.)*')|(?P<op>!=|=|\(|\))|(?P<word>[A-Za-z_][A-Za-z0-9_]*))",
)


class QueryError(ValueError):
    pass


def tokenize(query: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    query = query.rstrip()
    while position < len(query):
        match = _TOKEN.match(query, position)
        if match is None:
            raise QueryError(f"cannot read the query at {query[position:]!r}")
        kind = match.lastgroup or ""
        text = match.group(kind)
        if kind == "string":
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        tokens.append((kind, text))
        position = match.end()
    return tokens


def compile_query(query: str, *, root_id: str) -> Predicate:
    """A predicate over file records with ``title``, ``mimeType``, ``parents`` (ids) and ``trashed``."""
    parser = _Parser(tokenize(query), root_id)
    predicate = parser.expr()
    if parser.position != len(parser.tokens):
        raise QueryError(f"unexpected {parser.tokens[parser.position][1]!r} in {query!r}")
    return predicate


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], root_id: str) -> None:
        self.tokens = tokens
        self.position = 0
        self.root_id = root_id

    def peek_word(self) -> str:
        if self.position < len(self.tokens) and self.tokens[self.position][0] == "word":
            return self.tokens[self.position][1].lower()
        return ""

    def take(self, kind: str, text: str | None = None) -> str:
        if self.position >= len(self.tokens):
            raise QueryError(f"query ends where a {text or kind} was expected")
        got_kind, got = self.tokens[self.position]
        if got_kind != kind or (text is not None and got.lower() != text.lower()):
            raise QueryError(f"expected {text or kind}, found {got!r}")
        self.position += 1
        return got

    def expr(self) -> Predicate:
        return self._joined("or", self.term, any)

    def term(self) -> Predicate:
        return self._joined("and", self.factor, all)

    def _joined(
        self, word: str, operand: Callable[[], Predicate], combine: Callable[[Iterator[bool]], bool]
    ) -> Predicate:
        """``operand (word operand)*``: one operand as it is, more combined (``any`` for or, ``all`` for and)."""
        parts = [operand()]
        while self.peek_word() == word:
            self.position += 1
            parts.append(operand())
        return parts[0] if len(parts) == 1 else lambda item: combine(p(item) for p in parts)

    def factor(self) -> Predicate:
        if self.peek_word() == "not":
            self.position += 1
            inner = self.factor()
            return lambda item: not inner(item)
        if self.position < len(self.tokens) and self.tokens[self.position] == ("op", "("):
            self.position += 1
            inner = self.expr()
            self.take("op", ")")
            return inner
        return self.clause()

    def clause(self) -> Predicate:
        if self.position < len(self.tokens) and self.tokens[self.position][0] == "string":
            parent = self.take("string")
            self.take("word", "in")
            self.take("word", "parents")
            parent = self.root_id if parent == "root" else parent
            return lambda item: parent in item["parents"]
        field = self.take("word")
        if field == "trashed":
            negate = self._operator(("=", "!=")) == "!="
            value = self.take("word").lower()
            if value not in ("true", "false"):
                raise QueryError(f"trashed compares with true or false, not {value!r}")
            wanted = (value == "true") != negate
            return lambda item: bool(item["trashed"]) == wanted
        if field not in ("title", "mimeType"):
            raise QueryError(f"the test double cannot search on {field!r}")
        operator = self._operator(("=", "!=", "contains"))
        value = self.take("string")
        fold = str.casefold if field == "title" else str
        needle = fold(value)
        if operator == "contains":
            return lambda item: needle in fold(item[field])
        equal = operator == "="
        return lambda item: (fold(item[field]) == needle) == equal

    def _operator(self, allowed: tuple[str, ...]) -> str:
        if self.position >= len(self.tokens):
            raise QueryError("query ends where an operator was expected")
        _, text = self.tokens[self.position]
        if text.lower() not in allowed:
            raise QueryError(f"operator {text!r} is not one of {allowed}")
        self.position += 1
        return text.lower()
