"""Safe YAML with limits: no duplicate keys, no alias bombs, no deep nesting, no stray errors.

PyYAML's composer follows aliases by reference, so a "billion laughs" document is cheap
to *load* and ruinous to *walk* (interpolation, masking, ``repr``): the composer here
counts what aliases would expand to and stops early. It is iterative (libyaml's event
stream, no recursion), refuses nesting deeper than :data:`MAX_DEPTH` at the line where
it happens, and refuses an alias to a collection that is still open (a cycle). Every
error the constructors raise (``2001-02-30``, ``!!int abc``, ``!!bool maybe``,
``!!set 5``, an integer past Python's digit limit), wherever it sits in the document,
becomes a :class:`yaml.YAMLError` with its line.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    DocumentEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when present

#: Collections nested deeper than this are refused (callbridge's own keys need about 6).
MAX_DEPTH = 64
#: What aliases may add to a document, counted in nodes after expansion.
MAX_ALIAS_NODES = 100_000


def _is(event: Any, kind: type | tuple[type, ...]) -> bool:
    """isinstance without narrowing: libyaml's events carry a Mark type the stubs do not admit."""
    return isinstance(event, kind)


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


class StrictSafeLoader(_Base):  # type: ignore[misc]
    """``yaml.SafeLoader`` (C-accelerated when available) with the limits of this module."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, MappingNode):
            raise ConstructorError(
                None, None, f"expected a mapping node, but found {node.id}", node.start_mark
            )
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *base' is merged by the base class; keys after it override
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
                if first is not None:
                    raise ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"found the key {key!r} twice (first at {_where(first)}, again at "
                        f"{_where(key_node.start_mark)}); the first would be silently lost: "
                        "keep one",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
            except TypeError:  # an unhashable key: the base class reports it
                break
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except RecursionError:
            raise ConstructorError(
                None, None, "nested too deeply to read", node.start_mark
            ) from None
        except Exception as exc:  # noqa: BLE001 - a constructor's own error, given its line
            raise ConstructorError(
                None, None, _constructor_problem(node, exc), node.start_mark
            ) from None

    def compose_limited(self) -> Node | None:
        """The single document's node graph, composed within the limits (None when empty)."""
        self.get_event()  # StreamStartEvent
        if self.check_event(StreamEndEvent):
            self.get_event()
            return None
        node = self._compose_document()
        if not self.check_event(StreamEndEvent):
            event = self.get_event()
            raise ComposerError(
                "expected a single document in the stream",
                node.start_mark if node is not None else None,
                "but found another document",
                event.start_mark,
            )
        self.get_event()
        return node

    def _compose_document(self) -> Node:
        start: Any = self.get_event()  # DocumentStartEvent
        anchors: dict[str, Node] = {}
        weights: dict[int, int] = {}  # id(node) -> nodes it stands for, aliases expanded
        open_nodes: set[int] = set()
        # Each frame: the collection, its anchor, the alias count at its start, a pending key.
        stack: list[list[Any]] = []
        expanded = 0  # every node composed, aliases counted at their full size
        alias_nodes = 0  # what aliases added
        root: Node | None = None

        def add(node: Node) -> None:
            nonlocal root
            if not stack:
                root = node
                return
            frame = stack[-1]
            parent = frame[0]
            if isinstance(parent, SequenceNode):
                parent.value.append(node)
            elif frame[3] is None:
                frame[3] = node
            else:
                parent.value.append((frame[3], node))
                frame[3] = None

        while True:
            event = self.get_event()
            if _is(event, DocumentEndEvent):
                break
            if _is(event, AliasEvent):
                target = anchors.get(event.anchor)
                if target is None:
                    raise ComposerError(
                        None, None, f"found undefined alias {event.anchor!r}", event.start_mark
                    )
                if id(target) in open_nodes:
                    raise ComposerError(
                        None,
                        None,
                        f"the alias *{event.anchor} refers to a collection that contains it "
                        "(a cycle); callbridge reads only finite data",
                        event.start_mark,
                    )
                weight = weights.get(id(target), 1)
                expanded += weight
                alias_nodes += weight
                if alias_nodes > MAX_ALIAS_NODES:
                    raise ComposerError(
                        None,
                        None,
                        f"aliases expand to more than {MAX_ALIAS_NODES:,} values (an alias "
                        "bomb?); write the values out, or use fewer nested aliases",
                        event.start_mark,
                    )
                add(target)
                continue
            if _is(event, ScalarEvent):
                tag = event.tag
                if tag is None or tag == "!":
                    tag = self.resolve(ScalarNode, event.value, event.implicit)
                node: Node = ScalarNode(
                    tag, event.value, event.start_mark, event.end_mark, style=event.style
                )
                expanded += 1
                weights[id(node)] = 1
                if event.anchor is not None:
                    anchors[event.anchor] = node
                add(node)
                continue
            if _is(event, CollectionStartEvent):
                if len(stack) >= MAX_DEPTH:
                    raise ComposerError(
                        None,
                        None,
                        f"nested more than {MAX_DEPTH} levels deep; callbridge reads "
                        "configurations, not deep data",
                        event.start_mark,
                    )
                tag = event.tag
                kind = SequenceNode if _is(event, SequenceStartEvent) else MappingNode
                if tag is None or tag == "!":
                    tag = self.resolve(kind, None, event.implicit)
                assert _is(event, (SequenceStartEvent, MappingStartEvent))
                node = kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
                if event.anchor is not None:
                    anchors[event.anchor] = node
                expanded += 1
                open_nodes.add(id(node))
                stack.append([node, event.anchor, expanded, None])
                continue
            # SequenceEndEvent / MappingEndEvent
            node, _, started, _ = stack.pop()
            node.end_mark = event.end_mark
            open_nodes.discard(id(node))
            weights[id(node)] = expanded - started + 1
            add(node)
        if root is None:  # pragma: no cover - a document always holds a node
            raise ComposerError(None, None, "empty document", start.start_mark)
        return root


def _constructor_problem(node: Any, exc: Exception) -> str:
    tag = str(getattr(node, "tag", "?"))
    short = "!!" + tag.rsplit(":", 1)[-1] if tag.startswith("tag:yaml.org,2002:") else tag
    value = getattr(node, "value", None)
    shown = repr(value) if isinstance(value, str) else "the value"
    if isinstance(value, str) and len(shown) > 60:
        shown = shown[:57] + "..."
    reason = str(exc) or type(exc).__name__
    if "integer string conversion" in reason:  # worded differently across Python versions
        reason = "more than 4300 digits"
    if isinstance(exc, (KeyError, AttributeError, TypeError)):  # the value did not parse at all
        reason = f"not a valid {short[2:] if short.startswith('!!') else short}"
    if len(reason) > 200:
        reason = reason[:197] + "..."
    return (
        f"cannot read {shown} as {short} ({reason}); quote it to keep it a string, or fix the value"
    )


def load_yaml(text: str) -> Any:
    """Parse one YAML document within the limits.

    Raises:
        yaml.YAMLError: with the line of the problem.
    """
    loader = StrictSafeLoader(text)
    try:
        node = loader.compose_limited()
        if node is None:
            return None
        try:
            return loader.construct_document(node)
        except yaml.YAMLError:
            raise
        except RecursionError:
            raise ConstructorError(
                None, None, "nested too deeply to read", node.start_mark
            ) from None
        except Exception as exc:  # noqa: BLE001 - a constructor's error outside construct_object
            raise ConstructorError(
                None, None, f"cannot read the document: {type(exc).__name__}: {exc}", None
            ) from None
    finally:
        loader.dispose()
