"""Tables of user-supplied text for the terminal: every cell and title is printed as it is.

Rich reads ``[...]`` in plain strings as markup: a subject ending in ``[js-0073]`` would lose that
text and ``[/oops]`` would crash the command with ``MarkupError``. :class:`TextTable` takes strings
(and their optional style) and hands rich :class:`~rich.text.Text` objects, which are never parsed;
every command that shows rules, outcomes or usage builds its tables with it.
"""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text


def text(value: object, style: str = "") -> Text:
    """``value`` as literal terminal text (no markup, no emoji codes)."""
    return Text(str(value), style=style)


class TextTable(Table):
    """A :class:`rich.table.Table` whose string cells, title and caption are literal text."""

    def __init__(
        self, *headers: str, title: str | None = None, caption: str | None = None, **kw: Any
    ) -> None:
        super().__init__(
            *headers,
            title=None if title is None else text(title),
            caption=None if caption is None else text(caption),
            **kw,
        )

    def add_row(self, *renderables: RenderableType | None, **kw: Any) -> None:
        super().add_row(*(text(r) if isinstance(r, str) else r for r in renderables), **kw)
