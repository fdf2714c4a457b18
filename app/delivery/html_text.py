"""An email's text part from its HTML: the readable words in reading order, paragraphs apart,
links kept as `text (url)`, what a reader never sees (head, scripts, styles) left out."""

import re
from html.parser import HTMLParser

_PARAGRAPH_TAGS = frozenset(
    {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "blockquote", "pre", "hr"}
    | {"section", "article", "header", "footer", "main", "nav", "aside"}
)
_LINE_TAGS = frozenset({"br", "tr"})
_HIDDEN_TAGS = frozenset({"head", "title", "script", "style", "template"})
_WHITESPACE = re.compile(r"\s+")


class _TextExtractor(HTMLParser):
    """Collects an HTML body's text: paragraphs as blank lines, links as `text (url)`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._links: list[tuple[str, int]] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN_TAGS:
            self._hidden += 1
        elif tag == "a":
            self._links.append((dict(attrs).get("href") or "", len(self.parts)))
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in _LINE_TAGS:
            self.parts.append("\n")
        elif tag in _PARAGRAPH_TAGS:
            self.parts.append("\n\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # `<br/>` is a void element: one break, not an opening and a closing.
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_TAGS:
            self._hidden = max(0, self._hidden - 1)
        elif tag == "a" and self._links:
            self._close_link(*self._links.pop())
        elif tag in _PARAGRAPH_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(_WHITESPACE.sub(" ", data))

    def _close_link(self, href: str, start: int) -> None:
        label = " ".join("".join(self.parts[start:]).split())
        if href and not href.startswith("#") and href.removeprefix("mailto:") != label:
            self.parts.append(f" ({href})" if label else href)


def html_to_text(html: str) -> str:
    """The plain-text part for an HTML body: tags stripped, links kept, whitespace collapsed."""
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    lines = (" ".join(line.split()) for line in "".join(extractor.parts).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
