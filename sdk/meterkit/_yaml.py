"""YAML for a file a person writes (``meters.yaml``): safe, bounded, and exact about where.

``yaml.safe_load`` runs no code, but it still lets a file take a process down or mean
something its author did not see: an alias is a reference, so a few hundred bytes of
nested aliases ("billion laughs") become billions of values to anything that walks the
result; a repeated key silently replaces the first; and composing recurses once per level
of nesting, so a deep enough file is a RecursionError. This loader refuses all three.
Anchors and aliases and repeated keys are reported with their line and loading goes on
(an alias reads as null), so one pass finds every such problem; nesting past
:data:`MAX_YAML_DEPTH`, or an integer too long to be one a catalog means, stops the load.
Every mapping records the line it starts on under :data:`LINE_KEY`.

libyaml parses when PyYAML has it (about four times faster); composing stays in Python
either way, because that is where anchors and aliases can still be seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.resolver import BaseResolver, Resolver

from ._errors import CatalogError, Problem

#: Levels of nesting a file may use. A catalog needs six (the file, ``meters``, a meter,
#: its ``data_fields``, a field, a value); each level costs a few Python frames to compose.
MAX_YAML_DEPTH = 32
#: Characters of an integer: 64-bit integers have at most 20, with the sign.
MAX_INT_CHARS = 40
#: The key under which each mapping records its first line.
LINE_KEY = "__line__"

ALIAS_MESSAGE = "anchors and aliases are not allowed in a catalog"


class _Checks(Composer, SafeConstructor, Resolver):
    """What both loaders add to PyYAML's safe loader."""

    def _start(self, file: str | None) -> None:
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.file, self.depth = file, 0
        self.problems: list[Problem] = []
        self.alias_lines: set[int] = set()  # one problem a line, however many aliases it has

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event: Any = self.peek_event()  # type: ignore[attr-defined] # the parser's, mixed in below
        alias = isinstance(event, AliasEvent)
        if alias or getattr(event, "anchor", None) is not None:
            line = event.start_mark.line + 1
            if line not in self.alias_lines:
                self.alias_lines.add(line)
                self.problems.append(Problem("yaml_alias", ALIAS_MESSAGE, file=self.file, line=line))
            if alias:
                self.get_event()  # type: ignore[attr-defined]
                return ScalarNode("tag:yaml.org,2002:null", "", event.start_mark, event.end_mark)
            event.anchor = None  # composed as if it had none: nothing can refer to it
        if self.depth >= MAX_YAML_DEPTH:
            raise ConstructorError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        self.depth += 1
        try:
            return Composer.compose_node(self, parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                seen = key in first
            except TypeError:  # an unhashable key: SafeConstructor reports it below
                continue
            if seen:
                message = f"key {key!r:.60} is repeated (first on line {first[key]}); a key may appear once"
                self.problems.append(Problem("duplicate_key", message, file=self.file, line=line))
            else:
                first[key] = line
        return SafeConstructor.construct_mapping(self, node, deep=deep)

    def construct_yaml_int(self, node: ScalarNode) -> int:
        if len(node.value) > MAX_INT_CHARS:  # int() of thousands of digits is slow, then refused
            raise ConstructorError(None, None, f"an integer longer than {MAX_INT_CHARS} characters", node.start_mark)
        return SafeConstructor.construct_yaml_int(self, node)


def _mapping_with_line(loader: _Checks, node: MappingNode) -> dict[Any, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping[LINE_KEY] = node.start_mark.line + 1
    return mapping


# PyYAML types these for its own loaders only
_Checks.add_constructor(BaseResolver.DEFAULT_MAPPING_TAG, _mapping_with_line)  # type: ignore[type-var]
_Checks.add_constructor("tag:yaml.org,2002:int", _Checks.construct_yaml_int)  # type: ignore[type-var]


class _PyLoader(_Checks, yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    def __init__(self, text: str, file: str | None) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        self._start(file)


LOADERS: list[type[_Checks]] = [_PyLoader]

if not TYPE_CHECKING and yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _CLoader(_Checks, CParser):  # _Checks first: Composer's methods, not libyaml's composer
        def __init__(self, text: str, file: str | None) -> None:
            CParser.__init__(self, text)
            self._start(file)

    LOADERS.insert(0, _CLoader)


def load_yaml(text: str, file: str | None = None, loader: type[_Checks] | None = None) -> tuple[Any, list[Problem]]:
    """The document in ``text`` and the problems read past (anchors, aliases, repeated
    keys). Raises :class:`CatalogError` with those and the one that stopped the load when
    ``text`` is not YAML this loader accepts."""
    reader: Any = (loader or LOADERS[0])(text, file)  # type: ignore[call-arg]
    try:
        doc = reader.get_single_data()
        return doc, sorted(reader.problems, key=lambda p: p.line or 0)  # found outer mappings first
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        problem = Problem("bad_yaml", f"not valid YAML: {reason}", file=file, line=line)
        raise CatalogError([*sorted(reader.problems, key=lambda p: p.line or 0), problem]) from None
    finally:
        reader.dispose()
