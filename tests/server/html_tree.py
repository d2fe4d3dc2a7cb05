"""A small HTML tree for asserting on the monitor's pages without a browser (stdlib only)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"meta", "link", "input", "br", "img", "hr", "source"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join([*self.texts, *(c.text for c in self.children)]).strip()

    def iter(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.iter()

    def find_all(self, tag: str | None = None, **attrs: str | None) -> list[Node]:
        """Nodes with this tag and these attributes (None: the attribute is present)."""
        found = []
        for node in self.iter():
            if tag is not None and node.tag != tag:
                continue
            if all(
                (name in node.attrs) if value is None else node.attrs.get(name) == value
                for name, value in ((k.rstrip("_").replace("_", "-"), v) for k, v in attrs.items())
            ):
                found.append(node)
        return found

    def find(self, tag: str | None = None, **attrs: str | None) -> Node | None:
        nodes = self.find_all(tag, **attrs)
        return nodes[0] if nodes else None


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].texts.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root
