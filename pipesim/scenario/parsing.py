"""A scenario's text parsed within limits (YAML, TOML or JSON), and the line of a field path in it.

Every failure is one line, ``file:line: invalid YAML: ...``, raised as :class:`~pipesim.errors.ScenarioError`.
The limits (see :mod:`pipesim.scenario`) are checked while parsing: YAML nesting and alias expansion while
composing (a "billion laughs" is refused in milliseconds), integer literals as they are read.

>>> parse_text("services: {llm: {capacity: 4}}", "yaml", "x.yaml")
{'services': {'llm': {'capacity': 4}}}
>>> LineFinder("a: 1\\nservices:\\n  llm: {capacity: 0}\\n", "yaml").line(("services", "llm", "capacity"))
3
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.container
import tomlkit.exceptions
import tomlkit.items
import tomlkit.parser
import yaml

from pipesim import _jsonsafe
from pipesim.errors import ScenarioError

#: Lists and mappings inside lists and mappings (a scenario needs 6; parsers recurse per level).
MAX_DEPTH = _jsonsafe.MAX_DEPTH
#: Digits of an integer literal (below Python's own ``int(str)`` limit, whatever the interpreter's setting).
MAX_INT_DIGITS = _jsonsafe.MAX_INT_DIGITS
#: Nodes that YAML aliases may add to a document when expanded (a "billion laughs" adds billions).
MAX_ALIAS_NODES = 100_000


class _LimitedYAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing (while composing) nesting deeper than MAX_DEPTH, alias expansions
    beyond MAX_ALIAS_NODES, aliases inside their own anchor, and integers longer than MAX_INT_DIGITS."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0  # collections open around the node being composed
        self._open_anchors: set[str] = set()
        self._alias_nodes = 0
        self._extents: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._check_alias(event)
            return super().compose_node(parent, index)
        anchor = event.anchor
        collection = isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent)
        if collection:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  event.start_mark)
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= collection
            self._open_anchors.discard(anchor)

    def _check_alias(self, event: yaml.AliasEvent) -> None:
        node = self.anchors.get(event.anchor)
        if node is None:
            return  # PyYAML reports an undefined alias itself
        if event.anchor in self._open_anchors:
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} refers to the node that holds it",
                                              event.start_mark)
        size, height = self._extent(node)
        self._alias_nodes += size
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"aliases expand to more than {MAX_ALIAS_NODES:,} nodes (a 'billion laughs'?)",
                event.start_mark)
        if self._depth + height > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} nests deeper than "
                                              f"{MAX_DEPTH} levels", event.start_mark)

    def _extent(self, node: yaml.Node) -> tuple[int, int]:
        """(nodes, levels of collections) of a composed node with its aliases expanded. Recursion is
        bounded: every composed node already passed the depth checks."""
        known = self._extents.get(id(node))
        if known is not None:
            return known
        size, height = 1, 0
        if isinstance(node, yaml.CollectionNode):
            children = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
            for child in children:
                child_size, child_height = self._extent(child)
                size, height = size + child_size, max(height, child_height)
            height += 1
        self._extents[id(node)] = (size, height)
        return size, height


def _construct_bounded_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    digits = sum(c.isdigit() for c in node.value)
    if digits > MAX_INT_DIGITS:
        raise yaml.constructor.ConstructorError(
            None, None, f"an integer of {digits} digits (the limit is {MAX_INT_DIGITS})", node.start_mark)
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_LimitedYAMLLoader.add_constructor("tag:yaml.org,2002:int", _construct_bounded_int)


def _compose_yaml(text: str) -> yaml.Node | None:
    loader = _LimitedYAMLLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _load_yaml(text: str) -> Any:
    loader = _LimitedYAMLLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _TomlParser(tomlkit.parser.Parser):
    """tomlkit's parser, noting where each key, value and table header starts (tomlkit keeps the
    document's structure but not positions)."""

    MAX_NESTING_DEPTH = MAX_DEPTH  # tomlkit's own guard against deep arrays, inline tables and dotted keys

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.starts: dict[int, int] = {}  # id(key or item) -> index in the text
        self.blame: int | None = None  # where an error not raised while reading the text belongs
        self._keep: list[Any] = []  # keeps noted objects alive, so their ids are not reused

    def _note(self, obj: Any, start: int) -> None:
        if id(obj) not in self.starts:
            self.starts[id(obj)] = start
            self._keep.append(obj)

    def _parse_value(self) -> Any:
        self.blame = None
        start = self._idx
        value = super()._parse_value()
        if isinstance(value, tomlkit.items.Integer):
            digits = sum(c.isdigit() for c in value.as_string())
            if digits > MAX_INT_DIGITS:
                raise self.parse_error(tomlkit.exceptions.ParseError,
                                       f"an integer of {digits} digits (the limit is {MAX_INT_DIGITS})")
        self._note(value, start)
        return value

    def _parse_table(self, parent_name: Any = None, parent: Any = None) -> Any:
        start = self._idx
        self.blame = None
        header = [part.key for part in self._peek_table()[1]][len(tuple(parent_name or ())):]
        key, table = super()._parse_table(parent_name, parent)
        # The table this header opens: [a.b.c] returns table a, with b and c inside.
        opened = table
        for name in header[1:]:
            opened = next((child for n, child, _ in _toml_children(_last(opened)) if n == name), opened)
        self._note(_last(opened), start)
        self.blame = start  # appending the table to its parent may still fail (a duplicate)
        return key, table

    def _parse_key(self) -> Any:
        self.blame = None
        start = self._idx
        key = super()._parse_key()
        for part in (key, *key):  # a dotted key's parts become the keys of nested tables
            self._note(part, start)
        return key


def _last(item: Any) -> Any:
    return item.body[-1] if isinstance(item, tomlkit.items.AoT) else item


def _parse_toml(text: str) -> tuple[Any, _TomlParser]:
    """The document and the parser that noted its positions. A syntax error is a ``_SyntaxError``."""
    parser = _TomlParser(text)
    try:
        return parser.parse(), parser
    except tomlkit.exceptions.TOMLKitError as exc:
        message = re.sub(r" at line \d+ col \d+$", "", str(exc))
        message = re.sub(r"^TOML (value|key) nested more than \d+ levels deep$",
                         f"nested deeper than {MAX_DEPTH} levels", message)
        where = parser.blame if parser.blame is not None else parser._idx
        raise _SyntaxError(message, _line_at(text, where)) from None


class _SyntaxError(Exception):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message, self.line = message, line


def _line_at(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _toml_children(item: Any) -> list[tuple[Any, Any, Any]]:
    """(key or index, child, the key object or None) of a tomlkit container, table, array or AoT."""
    if isinstance(item, tomlkit.items.AoT):
        return [(i, table, None) for i, table in enumerate(item.body)]
    if isinstance(item, tomlkit.items.Array):
        return [(i, value, None) for i, value in enumerate(item)]
    container = item if isinstance(item, tomlkit.container.Container) else getattr(item, "value", None)
    if isinstance(container, tomlkit.container.Container):
        return [(key.key, value, key) for key, value in container.body if key is not None]
    return []


_JSON_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def _yaml_friendly(match: re.Match[str]) -> str:
    """A JSON string as YAML reads it on the same line: YAML has no ``\\/`` escape and no key longer
    than 1024 characters (such a key is not found, and its problem takes its parent's line)."""
    string = match.group()
    if len(string) > 1000:
        return '"(long)"'
    return string.replace("\\/", "/")


class LineFinder:
    """Maps a field path to the line of the source text where it is (or its closest ancestor is)."""

    def __init__(self, text: str, fmt: str) -> None:
        self.text, self.fmt = text, fmt
        self._root: Any = None
        self._starts: dict[int, int] = {}
        self._parsed = False  # parsed again on the first question: only a file with problems needs it

    def _parse(self) -> None:
        self._parsed = True
        try:
            if self.fmt == "toml":
                self._root, parser = _parse_toml(self.text)
                self._starts = parser.starts
            elif self.fmt == "json":  # through YAML's composer, which keeps marks
                self._root = _compose_yaml(_JSON_STRING.sub(_yaml_friendly, self.text.replace("\t", " ")))
            else:
                self._root = _compose_yaml(self.text)
        except (yaml.YAMLError, _SyntaxError):
            self._root = None

    def line(self, path: tuple[Any, ...]) -> int | None:
        if not self._parsed:
            self._parse()
        if self._root is None:
            return None
        if self.fmt == "toml":
            return self._toml_line(self._root, path, 1)[1]
        node, line = self._root, self._root.start_mark.line + 1
        for part in path:
            child = None
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if key.value == str(part):
                        child, line = value, key.start_mark.line + 1
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                child = node.value[part]
                line = child.start_mark.line + 1
            if child is None:
                break
            node = child
        return line

    def _toml_line(self, item: Any, path: tuple[Any, ...], line: int) -> tuple[int, int]:
        """(how many parts of ``path`` were found, the line of the deepest). A table may be split over
        several headers (``[services.stt]`` ... ``[services.llm]``): every candidate is tried."""
        best = (0, line)
        if not path:
            return best
        for name, child, key in _toml_children(item):
            if name != path[0] and str(name) != str(path[0]):
                continue
            start = self._starts.get(id(child), self._starts.get(id(key)))
            child_line = _line_at(self.text, start) if start is not None else line
            found, found_line = self._toml_line(child, path[1:], child_line)
            if found + 1 > best[0]:
                best = (found + 1, found_line)
        return best


def _too_deep(data: Any) -> tuple[Any, ...] | None:
    """The path of the first list or mapping nested deeper than MAX_DEPTH, if any (without recursion)."""
    stack: list[tuple[Any, tuple[Any, ...], int]] = [(data, (), 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                return path
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((child, (*path, key), depth + 1) for key, child in items)
    return None


def format_for(path: Path) -> str:
    """The format of a scenario file, by its suffix: ``yaml``, ``toml`` or ``json``.

    >>> format_for(Path("x.yml"))
    'yaml'
    """
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix == ".toml":
        return "toml"
    if suffix == ".json":
        return "json"
    raise ScenarioError([f"{path}: unknown scenario format {suffix!r} (use .yaml, .yml, .toml or .json)"])


def parse_text(text: str, fmt: str, where: str) -> Any:
    """Parse a scenario's text within the limits above; any failure is one ``file:line: message``."""
    try:
        if fmt == "toml":
            data = _parse_toml(text)[0].unwrap()
        elif fmt == "json":
            data = _jsonsafe.loads(text)
        else:
            data = _load_yaml(text)
    except _SyntaxError as exc:
        raise ScenarioError([f"{where}:{exc.line}: invalid TOML: {one_line(exc.message, 300)}"]) from None
    except json.JSONDecodeError as exc:
        raise ScenarioError([f"{where}:{exc.lineno}: invalid JSON: {exc.msg}"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ScenarioError([f"{where}{line}: invalid YAML: {one_line(str(exc.problem), 300)}"]) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, e.g. NUL
        raise ScenarioError([f"{where}:{_line_at(text, exc.position)}: invalid YAML: character "
                             f"{exc.character!r} is not allowed"]) from None
    except yaml.YAMLError as exc:
        raise ScenarioError([f"{where}: invalid YAML: {one_line(str(exc), 300)}"]) from None
    deep = _too_deep(data)  # TOML's tables and dotted keys nest without brackets
    if deep is not None:
        line = LineFinder(text, fmt).line(deep) or 1
        raise ScenarioError([f"{where}:{line}: nested deeper than {MAX_DEPTH} levels"])
    return data



def one_line(text: str, limit: int) -> str:
    """``text`` with control characters escaped (a key or a CSV name may hold a newline), cut to ``limit``.

    >>> one_line("a\\nb" + "c" * 10, 8)
    'a\\\\nbc...'
    """
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."
