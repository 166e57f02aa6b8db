"""Reading the leaderboard's HTML back with the standard library's parser, for assertions."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Board:
    section_id: str
    title: str
    headers: list[str] = field(default_factory=list)
    bodies: dict[str, list[list[str]]] = field(default_factory=dict)  # tbody class -> rows of cell texts

    def column(self, header: str, body: str = "ranked") -> list[str]:
        index = self.headers.index(header)
        return [row[index] for row in self.bodies.get(body, [])]


class _BoardParser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.boards: list[Board] = []
        self._section: str | None = None
        self._in_h2 = False
        self._title: list[str] = []
        self._board: Board | None = None
        self._body: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_head = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and "track" in (attrs.get("class") or "").split():
            self._section, self._title = attrs.get("id", ""), []
        elif tag == "h2" and self._section is not None and self._board is None:
            self._in_h2 = True
        elif tag == "table" and "board" in (attrs.get("class") or "").split():
            self._board = Board(self._section or "", " ".join("".join(self._title).split()))
        elif self._board is not None:
            if tag == "thead":
                self._in_head = True
            elif tag == "tbody":
                self._body = attrs.get("class", "")
                self._board.bodies[self._body] = []
            elif tag == "tr":
                self._row = []
            elif tag in ("td", "th"):
                self._cell = []

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False
        elif self._board is None:
            return
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._in_head:
                self._board.headers = self._row
            elif self._body is not None:
                self._board.bodies[self._body].append(self._row)
            self._row = None
        elif tag == "thead":
            self._in_head = False
        elif tag == "table":
            self.boards.append(self._board)
            self._board, self._section = None, None

    def handle_data(self, data):
        if self._in_h2:
            self._title.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse_boards(html: str) -> list[Board]:
    parser = _BoardParser()
    parser.feed(html)
    return parser.boards
