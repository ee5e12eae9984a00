"""The largest image cxrfa decodes: a header claiming 100000x100000 pixels is refused, not decoded.

A decoder trusts the size in the header and allocates for it, so one crafted or broken file could exhaust memory
(PIL raises ``DecompressionBombError`` past twice its limit and only warns below). Both reading paths (``data
index`` and training) check the size from the header first and name the file.
"""

from __future__ import annotations

import re

MAX_PIXELS = 89_478_485  # PIL's decompression-bomb threshold; chest films are under 20 M pixels


def oversized(width: int, height: int) -> str | None:
    """The problem with an image of this size, or None: past :data:`MAX_PIXELS` decoding could exhaust memory."""
    if width * height <= MAX_PIXELS:
        return None
    return f"image is {width}x{height} pixels, over the {MAX_PIXELS:,}-pixel limit (a decompression bomb?)"


def bomb_problem(err: Exception) -> str:
    """:class:`PIL.Image.DecompressionBombError` (raised by ``Image.open``) as a problem line."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return f"image has {pixels}, over the {MAX_PIXELS:,}-pixel limit (a decompression bomb?)"
