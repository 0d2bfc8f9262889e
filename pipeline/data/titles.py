"""Title cleaning shared by the title encoder's tokenizer and TF-IDF."""

from __future__ import annotations

import html
import re

_SPACE = re.compile(r"\s+")
# Shopee titles carry UTF-8 bytes written out as literal escapes ("\xe3\x80\x90BISA COD"); they
# encode emoji and brackets, so they are dropped rather than decoded.
_BYTE_ESCAPE = re.compile(r"(\\x[0-9a-fA-F]{2})+")


def clean_title(title: str) -> str:
    """Undo HTML escapes, drop literal byte escapes and squeeze spaces; case is kept."""
    title = _BYTE_ESCAPE.sub(" ", html.unescape(title))
    return _SPACE.sub(" ", title).strip()


def normalise_title(title: str) -> str:
    """:func:`clean_title`, lower-cased: what TF-IDF sees."""
    return clean_title(title).lower()
