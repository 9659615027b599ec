"""YAML read within bounds, for every YAML file we read (task files and .config.yaml).

A few hundred bytes of nested aliases (a "billion laughs" bomb) expand to billions of values:
PyYAML builds them as shared references, cheaply, but anything that walks or prints the result
(a duplicate-key check, an error message) runs for minutes and gigabytes. `BoundedLoader` counts,
while composing, how much the aliases add and stops at the first alias past the budget; it also
refuses an alias inside its own anchor (an infinite value) and nesting deeper than MAX_DEPTH
(PyYAML composes recursively: Python's stack would overflow first). Each refusal is a
`YamlRefused` with the line of the alias or node at fault, as is a character YAML does not
allow (PyYAML's ReaderError, raised before parsing and without a line).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError

#: Aliases may add at most ALIAS_RATIO times the file's size, and always ALIAS_MIN (in characters
#: of the expanded values, plus one per node): plenty for `<<: *defaults` in every task of a big file.
ALIAS_RATIO = 10
ALIAS_MIN = 1_000_000
MAX_DEPTH = 100


_NESTING_HINT = "write the values out, or nest fewer aliases and levels"


class YamlRefused(yaml.YAMLError):
    """The document is refused before it is read whole: `line` (1-based) says where."""

    def __init__(self, line: int, problem: str, hint: str = _NESTING_HINT) -> None:
        super().__init__(problem)
        self.line = line
        self.problem = problem
        self.hint = hint


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose aliases, nesting and unreadable scalars are refused with a line."""

    def __init__(self, text: str) -> None:
        try:
            super().__init__(text)
        except yaml.reader.ReaderError as exc:
            raise YamlRefused(
                text.count("\n", 0, exc.position) + 1,
                f"character U+{exc.character:04X} is not allowed in YAML (a control character)",
                hint="remove it, or write it as an escape in a double-quoted string (e.g. \\x01)",
            ) from None
        self.alias_budget = max(ALIAS_MIN, ALIAS_RATIO * len(text))
        self._added = 0  # what the aliases composed so far add to the document
        self._sizes: dict[int, int] = {}  # id(node) -> its expanded size, once the node is complete
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML's stubs leave peek_event untyped
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is left to PyYAML's own error
                size = self._sizes.get(id(target))
                if size is None:
                    raise YamlRefused(line, f"alias *{event.anchor} is inside its own anchor: "
                                               "its value would be infinite")
                self._added += size
                if self._added > self.alias_budget:
                    raise YamlRefused(
                        line, f"aliases expand this file beyond {self.alias_budget:,} characters "
                              f"(alias *{event.anchor} here brings it to {self._added:,})")
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlRefused(line, f"nested more than {MAX_DEPTH} levels deep")
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None:  # (PyYAML types it optional; a node it composed is never None)
            self._sizes[id(node)] = self._size(node)
        return node

    def _size(self, node: yaml.Node) -> int:
        if isinstance(node, yaml.ScalarNode):
            return 1 + len(node.value)
        if isinstance(node, yaml.SequenceNode):
            return 1 + sum(self._sizes[id(item)] for item in node.value)
        return 1 + sum(self._sizes[id(key)] + self._sizes[id(value)] for key, value in node.value)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # e.g. an int of 5,000 digits, a 13th month
            kind = str(node.tag).rsplit(":", 1)[-1]
            reason = str(exc).split(";")[0]
            raise ConstructorError(None, None, f"this {kind} cannot be read ({reason}): quote it "
                                               "to keep it as text", node.start_mark) from None

