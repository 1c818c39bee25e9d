"""Cheap looks at a file before it is queued: is it an image, and does it look complete?

The full decode happens once, in the scorer; here we only read the first and
last bytes. JPEG, PNG and BMP say where they end, so a file still being
written (or cut short) is recognised without decoding it. TIFF and DICOM have
no cheap end marker: for them the stability check alone decides.
"""

from __future__ import annotations

import enum
import os

from pyfundus.io import SUPPORTED_EXTENSIONS, is_probably_image

_PNG_END = b"IEND\xaeB`\x82"


class Probe(enum.Enum):
    IMAGE = "image"
    INCOMPLETE = "incomplete"  # an image whose end has not been written (yet)
    NOT_IMAGE = "not_image"


def probe(path: str, size: int) -> Probe:
    has_image_name = os.path.splitext(path)[1].lower() in SUPPORTED_EXTENSIONS
    if size == 0:
        # Cameras create the file before writing it; an empty file with an image name is not done yet.
        return Probe.INCOMPLETE if has_image_name else Probe.NOT_IMAGE
    if not is_probably_image(path):
        # Foreign content under an image name is a broken capture: it is queued, and the
        # reader's message ("not an image file ...") becomes its failed verdict.
        return Probe.IMAGE if has_image_name else Probe.NOT_IMAGE
    return Probe.IMAGE if _looks_complete(path, size) else Probe.INCOMPLETE


def _looks_complete(path: str, size: int) -> bool:
    with open(path, "rb") as f:
        head = f.read(16)
        f.seek(max(0, size - 64))
        tail = f.read(64)
    if head.startswith(b"\xff\xd8\xff"):
        # Some writers pad after the end-of-image marker.
        return tail.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _PNG_END in tail
    if head.startswith(b"BM"):
        return size >= int.from_bytes(head[2:6], "little")  # bfSize: the file size the header declares
    return True
