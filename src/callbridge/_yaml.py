"""A safe YAML loader that refuses duplicate keys (PyYAML keeps the last one silently)."""

from __future__ import annotations

from typing import Any

import yaml

_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when present


class StrictSafeLoader(_Base):  # type: ignore[misc]
    """``yaml.SafeLoader`` (C-accelerated when available) that rejects duplicate keys."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *base' is merged by the base class; keys after it override
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"found the key {key!r} twice (the first would be silently lost)",
                        key_node.start_mark,
                    )
                seen[key] = True
            except TypeError:  # an unhashable key: the base class reports it
                break
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]
