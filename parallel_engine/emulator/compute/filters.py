"""Compute list filters (`labels.k = "v"`, `status != RUNNING`, `(a = "b") AND (c = "d")`) and paging.

Supported: `=`, `!=` (with `*` wildcards), `:` (has / prefix), `eq` / `ne` (RE2 full match),
`AND`, `OR`, parentheses, and the implicit AND between parenthesised terms.
"""

from __future__ import annotations

import base64
import fnmatch
import re
from collections.abc import Callable
from typing import Any

from parallel_engine.emulator.compute.errors import ApiError, invalid

Predicate = Callable[[dict[str, Any]], bool]
_TOKEN = re.compile(
    r"""\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<op>!=|=|:|\beq\b|\bne\b)|(?P<q>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<word>[^\s()=!:"']+))""",
    re.IGNORECASE,
)
MAX_RESULTS = 500


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise invalid("filter", text, "Invalid list filter expression.")
        pos = match.end()
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "q":
            value = bytes(value[1:-1], "utf-8").decode("unicode_escape")
        out.append((kind, value))
    return out


def field_value(resource: dict[str, Any], path: str) -> Any:
    current: Any = resource
    for part in path.split("."):
        if isinstance(current, dict):
            current = current.get(part)
        else:
            return None
    return current


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return None
    return str(value)


def _compare(path: str, op: str, expected: str) -> Predicate:
    op = op.lower()

    def predicate(resource: dict[str, Any]) -> bool:
        actual = _as_text(field_value(resource, path))
        if op == ":":
            value = field_value(resource, path)
            return value is not None and (expected == "*" or (_as_text(value) or "").startswith(expected.rstrip("*")))
        if op in ("eq", "ne"):
            hit = actual is not None and re.fullmatch(expected, actual) is not None
            return hit if op == "eq" else not hit
        hit = actual is not None and (fnmatch.fnmatchcase(actual, expected) if "*" in expected else actual == expected)
        return hit if op == "=" else not hit

    return predicate


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], text: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.text = text

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise invalid("filter", self.text, "Invalid list filter expression.")
        self.pos += 1
        return token

    def expression(self) -> Predicate:
        terms = [self.conjunction()]
        while (t := self.peek()) is not None and t[0] == "word" and t[1].upper() == "OR":
            self.take()
            terms.append(self.conjunction())
        return lambda r: any(term(r) for term in terms)

    def conjunction(self) -> Predicate:
        terms = [self.term()]
        while (t := self.peek()) is not None and t[0] != "rp":
            if t[0] == "word" and t[1].upper() == "OR":
                break
            if t[0] == "word" and t[1].upper() == "AND":
                self.take()
            terms.append(self.term())
        return lambda r: all(term(r) for term in terms)

    def term(self) -> Predicate:
        kind, value = self.take()
        if kind == "lp":
            inner = self.expression()
            if self.take()[0] != "rp":
                raise invalid("filter", self.text, "Unbalanced parentheses.")
            return inner
        if kind == "word" and value.upper() == "NOT":
            inner = self.term()
            return lambda r: not inner(r)
        if kind != "word":
            raise invalid("filter", self.text, "Invalid list filter expression.")
        op_kind, op = self.take()
        if op_kind != "op":
            raise invalid("filter", self.text, f"Expected a comparison after '{value}'.")
        _, expected = self.take()
        return _compare(value, op, expected)


def parse(text: str | None) -> Predicate:
    """A predicate over resource JSON; an empty filter matches everything."""
    if not text or not text.strip():
        return lambda _r: True
    parser = _Parser(_tokens(text), text)
    predicate = parser.expression()
    if parser.peek() is not None:
        raise invalid("filter", text, "Invalid list filter expression.")
    return predicate


def page(
    items: list[dict[str, Any]], max_results: str | None, page_token: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of `items` and the token of the next page (None on the last)."""
    try:
        size = int(max_results) if max_results else MAX_RESULTS
    except ValueError:
        raise invalid("maxResults", max_results, "Must be an integer.") from None
    if not 0 <= size <= MAX_RESULTS:
        raise invalid("maxResults", size, f"Must be between 0 and {MAX_RESULTS}.")
    size = size or MAX_RESULTS
    start = 0
    if page_token:
        try:
            start = int(base64.urlsafe_b64decode(page_token.encode()).decode().removeprefix("offset:"))
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "invalid", "Invalid value for field 'pageToken'.") from None
    chunk = items[start : start + size]
    following = start + size
    token = base64.urlsafe_b64encode(f"offset:{following}".encode()).decode() if following < len(items) else None
    return chunk, token
