"""Reading fundus photographs as they come off a clinic's camera.

``read_image`` accepts a path, raw bytes, a numpy array or a PIL image and
returns a :class:`FundusImage` holding C-contiguous ``uint8`` RGB pixels plus
the DICOM identity tags when there are any. Every failure raises
:class:`ImageReadError` naming the file and giving a reason a clinic IT admin
can act on.

Design notes:

* The format is detected from the content (magic bytes), never from the file
  extension; camera software often writes odd or missing extensions.
* The pixel count is checked from the header before anything is decoded, so
  a decompression bomb costs nothing. Pillow's own bomb check is bypassed by
  opening the format plugin directly, so our message is the one users see.
* Decoding is strict: a truncated file raises. Do not set
  ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` anywhere in the process, it would
  silently turn truncated captures into grey-bottomed images.
* High bit depths are scaled to 8 bits by the *declared* bit depth (16 for
  PNG/TIFF, BitsStored for DICOM), never stretched to the image's own range:
  exposure is part of image quality and must survive the conversion.
* Memory is bounded by bytes, not only by pixels: a 389 KB PNG can declare
  10000x10000 RGBA, 400 MB once decoded. Decodes in one process (PIL formats
  and DICOM) share ``DECODE_MEMORY_BYTES`` (a larger one waits until it can
  run alone); a PIL picture is converted to RGB strip by strip, never through
  full-size copies; and a PNG, TIFF or BMP whose RGB picture would exceed
  ``REDUCE_ABOVE_BYTES`` is box-reduced while it is converted, by the 1/2,
  1/4 or 1/8 that a JPEG's draft would take for the same ``min_side``.
* File names and DICOM tags are patient data: this module never logs them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
import threading
import warnings
from dataclasses import dataclass, field
from typing import IO, Any, Iterator, Union

import numpy as np
from PIL import (
    BmpImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
)

__all__ = [
    "CAMERA_FRAME",
    "UNKNOWN_CAMERA",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_EXTENSIONS",
    "FundusImage",
    "ImageReadError",
    "camera_key",
    "declared_size",
    "encode_jpeg",
    "is_probably_image",
    "peek_camera",
    "read_image",
]

DEFAULT_MAX_PIXELS = 100_000_000
# A file is read whole (so its hash is of exactly the bytes decoded); no fundus capture comes near this.
DEFAULT_MAX_BYTES = 1 << 30
# Decoded pixels all decodes of a process may hold at once; one that needs more runs alone. A 100 MP RGBA
# PNG takes 400 MB in Pillow: without a bound, four at once and a thumbnail took 5-6 GB.
DECODE_MEMORY_BYTES = 512 << 20
# A PNG, TIFF or BMP whose RGB picture would be larger (about 22 MP) is reduced while converted, when the
# caller says how much it needs (min_side). Camera captures stay below it and are decoded as they are.
REDUCE_ABOVE_BYTES = 64 << 20
_STRIP_BYTES = 8 << 20  # converted per strip of about this many source bytes
# The frame of the FQS cameras' photos (Gong et al., arXiv:2411.12273): 2304 x 1728.
CAMERA_FRAME = (2304, 1728)
UNKNOWN_CAMERA = "unknown"
_EXIF_MAKE, _EXIF_MODEL = 0x010F, 0x0110

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".dcm")

GRAYSCALE_WARNING = (
    "grayscale image (red-free?): the model was trained on colour photos, score is less reliable"
)

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray, Image.Image]

_PIL_PLUGINS: dict[str, type[ImageFile.ImageFile]] = {
    "JPEG": JpegImagePlugin.JpegImageFile,
    "PNG": PngImagePlugin.PngImageFile,
    "TIFF": TiffImagePlugin.TiffImageFile,
    "BMP": BmpImagePlugin.BmpImageFile,
}

# Formats we recognise only to give a better message than "not an image".
_UNSUPPORTED_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"GIF8", 0, "GIF"),
    (b"WEBP", 8, "WebP"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000 codestream"),
    (b"%PDF", 0, "PDF"),
    (b"PK\x03\x04", 0, "ZIP archive"),
)

# "BM" alone is too weak a signature (text can start with it): also check
# the DIB header size field (OS/2 v1, BITMAPINFOHEADER ... BITMAPV5HEADER).
_BMP_HEADER_SIZES = tuple(struct.pack("<I", n) for n in (12, 40, 52, 56, 64, 108, 124))

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_PILLOW_REDUCES = ("L", "LA", "RGB", "RGBA")  # modes Image.reduce averages as colours (not palette indices)

_ORIENTATION = 0x0112  # EXIF
# EXIF orientation -> the numpy view that shows the picture upright (as ImageOps.exif_transpose would).
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a),
}

_UNDEFINED_LENGTH = 0xFFFFFFFF  # a DICOM element (encapsulated pixel data) that runs until its delimiter

_LATERALITY = {"L": "L", "R": "R", "LEFT": "L", "RIGHT": "R", "OS": "L", "OD": "R"}


class ImageReadError(ValueError):
    """A file could not be read as a fundus image; ``str()`` is ``"{path}: {reason}"``.

    ``incomplete``: the file may still be being written: it ends before its content does (or, for a
    DICOM, lacks a part every image has). A reader cannot tell that from a file cut short for good.
    ``sha256``: of the bytes that were read, when the failure came after reading them.
    """

    def __init__(self, path: str, reason: str, *, incomplete: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.incomplete = incomplete
        self.sha256: str | None = None

    def __reduce__(self):  # picklable (process pools): the two arguments, then the attributes
        return (type(self), (self.path, self.reason), {"incomplete": self.incomplete, "sha256": self.sha256})


@dataclass
class FundusImage:
    """A decoded photograph.

    ``original_size`` is (width, height) of the full-resolution image in the
    orientation of ``pixels`` (after EXIF rotation); ``scale`` is the factor
    from it to ``pixels`` (0.25 when a JPEG was decoded at a quarter size).
    """

    pixels: np.ndarray
    path: str | None
    format: str
    original_size: tuple[int, int]
    scale: float = 1.0
    sha256: str | None = None  # of the file's bytes, exactly those decoded (None for in-memory images)
    camera: str = UNKNOWN_CAMERA  # which camera took it (see camera_key): the gate learns each camera apart
    eye: str | None = None  # "L" or "R", from DICOM ImageLaterality (or the other laterality tags)
    patient_id: str | None = None
    study_uid: str | None = None
    sop_instance_uid: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Limits:
    min_side: int | None
    max_pixels: int
    min_size: int


def source_name(source: Any) -> str | None:
    """The path a scoring input came from, for reports; None for in-memory images."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, FundusImage):
        return source.path
    return None


def declared_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(width, height) as the file's header declares it, without decoding any pixel; None when there is
    no readable header (``read_image`` then says what is wrong)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
            f.seek(0)
            fmt = _sniff(head)
            if fmt in _PIL_PLUGINS:
                return _PIL_PLUGINS[fmt](f).size
            if fmt == "DICOM" or (head and _extension(path) == ".dcm"):
                import pydicom

                header = pydicom.dcmread(f, stop_before_pixels=True, force=fmt is None)
                return int(header.Columns), int(header.Rows)
    except Exception:  # anything unreadable: the full read reports it
        return None
    return None


def is_probably_image(path: str | os.PathLike[str]) -> bool:
    """Cheap pre-filter for folder scans: looks at the first 132 bytes only."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if _sniff(head) is not None:
        return True
    # A DICOM file without the 128-byte preamble can only be told by its name.
    return bool(head) and _extension(path) == ".dcm"


def read_image(
    source: Source,
    *,
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: int = 128,
) -> FundusImage:
    """Read a fundus photograph into RGB ``uint8`` pixels.

    ``min_side``: the shorter side the caller needs; JPEGs are then decoded at
    the largest DCT reduction (1/2, 1/4, 1/8) that still reaches it.
    ``max_pixels``: refuse images whose header declares more pixels than this.
    ``min_size``: refuse images whose shorter side is below this.
    """
    limits = _Limits(min_side, max_pixels, min_size)
    if isinstance(source, np.ndarray):
        return _from_array(source, limits)
    if isinstance(source, Image.Image):
        return _from_pil_image(source, limits)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _read_data(bytes(source), "<bytes>", "", limits)
    if isinstance(source, (str, os.PathLike)):
        return _read_path(os.fspath(source), limits)
    raise TypeError(f"read_image() cannot read a {type(source).__name__}")


# --- sources ---------------------------------------------------------------


def _read_path(path: str, limits: _Limits) -> FundusImage:
    if os.path.isdir(path):
        raise ImageReadError(path, "is a directory, not an image file")
    try:
        with open(path, "rb") as f:
            # Read once, then hash and decode the same bytes: a file swapped in between
            # can never have its verdict stored under the other file's hash.
            data = f.read(DEFAULT_MAX_BYTES + 1)
        if len(data) > DEFAULT_MAX_BYTES:
            raise ImageReadError(path, f"file is over the {DEFAULT_MAX_BYTES >> 20} MiB limit for a capture")
        image = _read_data(data, path, _extension(path), limits)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied (check the file's access rights)") from None
    except OSError as e:
        raise ImageReadError(path, f"could not read the file ({e.strerror or e})") from e
    image.path = path
    return image


def _read_data(data: bytes, name: str, ext: str, limits: _Limits) -> FundusImage:
    """Decode ``data``; the image, or the error, carries the sha256 of exactly these bytes."""
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        image = _read_stream(io.BytesIO(data), name, ext, limits)
    except ImageReadError as exc:
        exc.sha256 = sha256
        raise
    image.sha256 = sha256
    return image


def _read_stream(fp: IO[bytes], name: str, ext: str, limits: _Limits) -> FundusImage:
    head = fp.read(132)
    if not head:
        raise ImageReadError(name, "file is empty")
    fp.seek(0)
    fmt = _sniff(head)
    if fmt == "DICOM":
        return _read_dicom(fp, name, limits, force=False)
    if fmt is not None:
        return _read_pil(fp, fmt, name, limits)
    if ext == ".dcm":
        return _read_dicom(fp, name, limits, force=True)
    kind = _unsupported_kind(head)
    if kind is not None:
        raise ImageReadError(
            name, f"{kind} files are not supported (use JPEG, PNG, TIFF, BMP or DICOM)"
        )
    raise ImageReadError(name, "not an image file (content is not JPEG, PNG, TIFF, BMP or DICOM)")


def _from_array(arr: np.ndarray, limits: _Limits) -> FundusImage:
    name = "<array>"
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ImageReadError(
            name, f"expected an HxWx3 or HxW uint8 array, got shape {arr.shape} dtype {arr.dtype}"
        )
    h, w = arr.shape[:2]
    _check_size(name, w, h, limits)
    # A contiguous RGB array is used as is, without a copy.
    pixels = _gray_to_rgb(arr) if arr.ndim == 2 else np.ascontiguousarray(arr)
    image = FundusImage(pixels=pixels, path=None, format="ARRAY", original_size=(w, h))
    return _finish(image, grayscale_source=arr.ndim == 2)


def _from_pil_image(im: Image.Image, limits: _Limits) -> FundusImage:
    name = getattr(im, "filename", "") or "<PIL image>"
    _check_size(name, *im.size, limits)
    try:
        pixels, gray = _pil_to_rgb(im)
        pixels = _upright(pixels, im)
    except Exception as e:  # Pillow raises assorted types for undecodable data
        raise _decode_failure(name, im.format or "image", e) from e
    height, width = pixels.shape[:2]
    image = FundusImage(pixels=pixels, path=None, format=im.format or "PIL", original_size=(width, height))
    return _finish(image, grayscale_source=gray)


# --- PIL formats -----------------------------------------------------------


def _read_pil(fp: IO[bytes], fmt: str, name: str, limits: _Limits) -> FundusImage:
    try:
        # The plugin class, not Image.open: its bomb check must not pre-empt ours.
        im = _PIL_PLUGINS[fmt](fp)
    except Exception as e:
        raise ImageReadError(name, f"corrupt {fmt} header ({e})") from e
    width, height = im.size
    _check_size(name, width, height, limits)
    # JPEG decodes at a reduced size (DCT scaling); the others are reduced while converted to RGB.
    scale = _draft(im, limits.min_side) if fmt == "JPEG" else 1.0
    factor = 1 if fmt == "JPEG" else _reduction(width, height, limits.min_side)
    decoded_width, decoded_height = im.size
    memory = _pillow_bytes(im.mode, decoded_width * decoded_height) + 3 * decoded_width * decoded_height // factor**2
    try:
        with DECODE_MEMORY.reserve(memory), _pillow_bomb_warning_silenced(width * height):
            im.load()
            pixels, gray = _pil_to_rgb(im, factor)
            pixels = _upright(pixels, im)
    except Exception as e:  # Pillow raises assorted types for undecodable data
        raise _decode_failure(name, fmt, e) from e
    if pixels.shape[:2] != (decoded_height // factor, decoded_width // factor):
        width, height = height, width  # turned by its EXIF orientation
    image = FundusImage(
        pixels=pixels, path=None, format=fmt, original_size=(width, height), scale=scale / factor,
        camera=_exif_camera(im),
    )
    return _finish(image, grayscale_source=gray)


class _DecodeMemory:
    """What the decodes running in this process hold; a decode waits until its share fits the budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.in_use = 0
        self._cv = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        with self._cv:
            self._cv.wait_for(lambda: self.in_use == 0 or self.in_use + nbytes <= self.budget)
            self.in_use += nbytes
        try:
            yield
        finally:
            with self._cv:
                self.in_use -= nbytes
                self._cv.notify_all()


DECODE_MEMORY = _DecodeMemory(DECODE_MEMORY_BYTES)


def _pillow_bytes(mode: str, pixels: int) -> int:
    """The memory Pillow gives a decoded image: 1 byte a pixel for L/P/1, 2 for 16-bit, else 4."""
    if mode in ("1", "L", "P"):
        return pixels
    return 2 * pixels if mode.startswith("I;16") else 4 * pixels


def _reduction(width: int, height: int, min_side: int | None) -> int:
    """The box factor for a picture too large to keep whole: 2, 4 or 8, keeping the shorter side >= min_side."""
    factor = 1
    if min_side and 3 * width * height > REDUCE_ABOVE_BYTES:
        while factor < 8 and min(width, height) // (2 * factor) >= min_side:
            factor *= 2
    return factor


def _upright(pixels: np.ndarray, im: Image.Image) -> np.ndarray:
    """The pixels turned as the image's EXIF orientation says (after any reduction: turning a small copy)."""
    turn = _UPRIGHT.get(im.getexif().get(_ORIENTATION, 1))
    return pixels if turn is None else np.ascontiguousarray(turn(pixels))


@contextlib.contextmanager
def _pillow_bomb_warning_silenced(pixels: int) -> Iterator[None]:
    """TIFF re-runs Pillow's bomb check while loading; ours already ran."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or pixels <= limit:
        # catch_warnings swaps process-wide state (not thread-safe before
        # Python 3.14), so it is entered only when Pillow would warn.
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _draft(im: ImageFile.ImageFile, min_side: int | None) -> float:
    """Ask libjpeg for DCT-domain downscaling; returns the scale obtained."""
    if not min_side:
        return 1.0
    # Pillow picks the largest 1/2^k with both sides >= the request, so asking
    # for a min_side square keeps the shorter side >= min_side.
    width = im.size[0]
    result = im.draft(im.mode, (min_side, min_side))
    if result is None:
        return 1.0
    _, box = result
    return box[2] / width


def _pil_to_rgb(im: Image.Image, factor: int = 1) -> tuple[np.ndarray, bool]:
    """RGB uint8 pixels, reduced by ``factor`` (box means), and whether the source had a single channel.

    Strip by strip: a whole-image convert() makes full-size copies (a 100 MP RGBA picture went through
    three of 400 MB each). The edge rows and columns that do not fill a box are left out.
    """
    width, height = im.size[0] // factor * factor, im.size[1] // factor * factor
    rows = max(1, _STRIP_BYTES // (4 * im.size[0]) // factor) * factor
    pixels = np.empty((height // factor, width // factor, 3), np.uint8)
    gray = False
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        strip = im.crop((0, top, width, bottom))
        if factor > 1 and strip.mode in _PILLOW_REDUCES:
            strip, factor_left = strip.reduce(factor), 1  # in C, on the 8-bit bands (alpha premultiplied)
        else:
            factor_left = factor
        rgb, gray = _strip_to_rgb(strip)
        pixels[top // factor : bottom // factor] = _box_mean(rgb, factor_left)
    return pixels, gray


def _box_mean(rgb: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return rgb
    import cv2  # INTER_AREA by a whole factor is the mean of each box

    height, width = rgb.shape[0] // factor, rgb.shape[1] // factor
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def _strip_to_rgb(im: Image.Image) -> tuple[np.ndarray, bool]:
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        gray16 = np.asarray(im)
        return _gray_to_rgb(_to_uint8(gray16, bits=16)), True
    if "A" in im.getbands():
        # Composite onto black: transparent pixels may hold arbitrary colours.
        return _premultiplied_rgb(im), mode == "LA"
    gray = mode in ("1", "L", "F")
    if gray:
        return _gray_to_rgb(np.asarray(im.convert("L"))), True
    if mode != "RGB":
        try:
            im = im.convert("RGB")
        except ValueError:
            raise ValueError(f"unsupported colour mode {mode}") from None
    return np.array(im), False


def _premultiplied_rgb(im: Image.Image) -> np.ndarray:
    if im.mode == "LA":
        return _gray_to_rgb(np.asarray(im.convert("La"))[..., 0])
    rgba = im if im.mode == "RGBA" else im.convert("RGBA")
    return np.ascontiguousarray(np.asarray(rgba.convert("RGBa"))[..., :3])


def _decode_failure(name: str, fmt: str, e: Exception) -> ImageReadError:
    text = str(e)
    if isinstance(e, EOFError) or "truncated" in text.lower():
        return ImageReadError(name, f"truncated {fmt} (file ends early)", incomplete=True)
    if isinstance(e, Image.DecompressionBombError):
        return ImageReadError(name, f"image is larger than Pillow's safety limit ({text})")
    return ImageReadError(name, f"corrupt or unsupported {fmt} data, could not decode it ({text})")


# --- DICOM -----------------------------------------------------------------


def _read_dicom(fp: IO[bytes], name: str, limits: _Limits, *, force: bool) -> FundusImage:
    # pydicom is imported on first use: the daemon and CLI start faster.
    import pydicom

    try:
        header = pydicom.dcmread(fp, stop_before_pixels=True, force=force)
        # Before any element is read: reading one replaces the raw element that holds its declared length.
        cut_short = _ends_early(header)
        rows, cols = int(header.get("Rows") or 0), int(header.get("Columns") or 0)
    except Exception as e:  # pydicom raises assorted types on malformed files
        raise ImageReadError(name, f"corrupt DICOM header ({e})") from e
    if cut_short:
        # A DICOM has no end marker: a file still being written is told by an element shorter than it says.
        raise ImageReadError(name, "truncated DICOM (the file ends inside its header)", incomplete=True)
    if not rows or not cols:
        # A header cut at an element boundary looks the same, so this too may be a file still being written.
        raise ImageReadError(
            name, "DICOM has no pixel data (no Rows/Columns: not an image object, or cut short)", incomplete=True
        )
    _check_size(name, cols, rows, limits)
    syntax = _transfer_syntax(header)
    _check_decoder(name, syntax)
    # The pixel data as read, the decoded frame in its own depth, and the 8-bit RGB picture.
    sample_bytes = -(-int(header.get("BitsAllocated") or 8) // 8)
    memory = rows * cols * (2 * int(header.get("SamplesPerPixel") or 1) * sample_bytes + 3)

    with DECODE_MEMORY.reserve(memory):
        fp.seek(0)
        try:
            ds = pydicom.dcmread(fp, force=force)
        except Exception as e:
            raise ImageReadError(name, f"corrupt DICOM file ({e})") from e
        if "PixelData" not in ds:
            # pydicom drops encapsulated pixel data that lacks its closing delimiter: cut short, or stripped.
            raise ImageReadError(name, "DICOM has no pixel data (cut short, or stripped)", incomplete=True)
        ds.file_meta.TransferSyntaxUID = syntax
        _check_pixel_data_length(ds, name, syntax)
        pixels, gray = _dicom_pixels(ds, name)

    image = FundusImage(
        pixels=pixels,
        path=None,
        format="DICOM",
        original_size=(cols, rows),
        camera=camera_key(
            _tag_text(ds, "Manufacturer"), _tag_text(ds, "ManufacturerModelName"), _tag_text(ds, "DeviceSerialNumber")
        ),
        eye=_laterality(ds),
        patient_id=_tag_text(ds, "PatientID"),
        study_uid=_tag_text(ds, "StudyInstanceUID"),
        sop_instance_uid=_tag_text(ds, "SOPInstanceUID"),
    )
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        image.warnings.append(
            f"multi-frame DICOM ({frames} frames): only the first frame is scored"
        )
    return _finish(image, grayscale_source=gray)


def _ends_early(ds) -> bool:
    """Whether the file ended inside an element (pydicom keeps the bytes there were) or before any."""
    from pydicom.dataelem import RawDataElement

    elements = list(ds.elements())  # raw: with the lengths the file declared
    return not elements or any(
        isinstance(element, RawDataElement)
        and element.length != _UNDEFINED_LENGTH
        and element.value is not None
        and len(element.value) < element.length
        for element in elements
    )


def _check_pixel_data_length(ds, name: str, syntax: str) -> None:
    """Uncompressed pixel data must be exactly what Rows x Columns x samples x bits x frames make.

    Shorter because the file ends early: truncated (still being written, or cut short). Otherwise a
    mismatch means the header lies: decoded anyway, the picture would be cropped or sheared.
    """
    from pydicom.uid import UID

    if UID(syntax).is_compressed:
        return  # the decoder checks each frame against Rows and Columns
    element = ds.get_item(0x7FE00010)  # PixelData, raw: its declared length next to the bytes present
    present = len(element.value or b"")
    declared = present if element.length == _UNDEFINED_LENGTH else element.length
    if present < declared:
        raise ImageReadError(
            name, f"truncated DICOM (pixel data ends early: {present} of {declared} bytes)", incomplete=True
        )
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples, bits = int(ds.get("SamplesPerPixel") or 1), int(ds.get("BitsAllocated") or 8)
    frames = int(ds.get("NumberOfFrames") or 1)
    expected = -(-rows * cols * samples * frames * bits // 8)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "YBR_FULL_422":
        expected = expected * 2 // 3  # two chroma samples shared by each pair of pixels
    if present not in (expected, expected + 1):  # one pad byte makes an odd length even
        raise ImageReadError(
            name,
            f"DICOM Rows/Columns do not match its pixel data: {rows} rows x {cols} columns x {samples} "
            f"sample(s) x {bits} bits x {frames} frame(s) need {expected} bytes, the file holds {present}",
        )


def _transfer_syntax(header) -> str:
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    syntax = header.file_meta.get("TransferSyntaxUID")
    if syntax:
        return syntax
    # Raw datasets (no file meta) are uncompressed; pydicom guessed the encoding.
    implicit = header.original_encoding[0]
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def _check_decoder(name: str, syntax: str) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    name_of_syntax = UID(syntax).name
    label = f"{name_of_syntax} ({syntax})" if name_of_syntax != syntax else syntax
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise ImageReadError(
            name,
            f"DICOM pixel data uses transfer syntax {label} which no installed decoder supports",
        )


def _dicom_pixels(ds, name: str) -> tuple[np.ndarray, bool]:
    from pydicom.pixels import pixel_array

    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        raise ImageReadError(
            name, "DICOM photometric interpretation PALETTE COLOR is not supported"
        )
    try:
        # index=0 decodes only the first frame; YBR is converted to RGB by pydicom.
        arr = pixel_array(ds, index=0)
    except Exception as e:  # decoder plugins raise assorted types
        raise ImageReadError(name, f"DICOM pixel data could not be decoded ({e})") from e

    bits = int(ds.get("BitsStored") or arr.dtype.itemsize * 8)
    pixels = _to_uint8(arr, bits)
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return np.ascontiguousarray(pixels), False
    if pixels.ndim != 2:
        raise ImageReadError(name, f"DICOM pixel data has unexpected shape {arr.shape}")
    if photometric == "MONOCHROME1":  # MONOCHROME1 stores white as 0
        pixels = 255 - pixels
    return _gray_to_rgb(pixels), True


def _laterality(ds) -> str | None:
    for keyword in ("ImageLaterality", "Laterality"):
        value = _tag_text(ds, keyword)
        if value and value.upper() in _LATERALITY:
            return _LATERALITY[value.upper()]
    return None


def _tag_text(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


# --- camera identity ---------------------------------------------------------


def camera_key(make: str | None, model: str | None, serial: str | None = None) -> str:
    """The camera as one string: maker and model (and serial number when the file gives one), or "unknown".

    From DICOM Manufacturer, ManufacturerModelName and DeviceSerialNumber, or EXIF Make and Model.
    Whitespace is collapsed and the maker is not repeated when the model already starts with it
    ("Canon" + "Canon CR-2" -> "Canon CR-2"). Identifies a device, never a patient.
    """
    parts = [" ".join(str(p).split()) for p in (make, model) if p and str(p).strip()]
    if len(parts) == 2 and parts[1].lower().startswith(parts[0].lower()):
        parts = parts[1:]
    if not parts:
        return UNKNOWN_CAMERA
    key = " ".join(parts)
    serial = " ".join(str(serial).split()) if serial else ""
    return f"{key} #{serial}" if serial else key


def peek_camera(path: str | os.PathLike[str]) -> str:
    """The camera key of a file from its header alone (no pixels decoded): for routing a capture to
    its camera's model before scoring. "unknown" when the file does not say, or cannot be read."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(132)
            f.seek(0)
            fmt = _sniff(head)
            if fmt == "DICOM" or (fmt is None and _extension(path) == ".dcm"):
                import pydicom

                ds = pydicom.dcmread(f, stop_before_pixels=True, force=fmt is None)
                return camera_key(
                    _tag_text(ds, "Manufacturer"), _tag_text(ds, "ManufacturerModelName"),
                    _tag_text(ds, "DeviceSerialNumber"),
                )  # fmt: skip
            if fmt in _PIL_PLUGINS:
                return _exif_camera(_PIL_PLUGINS[fmt](f))
    except Exception:  # an unreadable header says nothing about the camera; scoring reports the problem
        return UNKNOWN_CAMERA
    return UNKNOWN_CAMERA


def _exif_camera(im: Image.Image) -> str:
    try:
        exif = im.getexif()
    except Exception:  # a broken EXIF block must not cost the capture
        return UNKNOWN_CAMERA
    return camera_key(exif.get(_EXIF_MAKE), exif.get(_EXIF_MODEL))


# --- shared helpers ----------------------------------------------------------


def _sniff(head: bytes) -> str | None:
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head.startswith(b"BM") and head[14:18] in _BMP_HEADER_SIZES:
        return "BMP"
    if head[128:132] == b"DICM":
        return "DICOM"
    return None


def _unsupported_kind(head: bytes) -> str | None:
    for signature, offset, kind in _UNSUPPORTED_SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return kind
    return None


def _extension(path: str | os.PathLike[str]) -> str:
    return os.path.splitext(os.fspath(path))[1].lower()


def _check_size(name: str, width: int, height: int, limits: _Limits) -> None:
    pixels = width * height
    if pixels > limits.max_pixels:
        raise ImageReadError(
            name,
            f"image is {width}x{height} = {_megapixels(pixels)}, over the "
            f"{_megapixels(limits.max_pixels)} cap (possible decompression bomb)",
        )
    if min(width, height) < limits.min_size:
        raise ImageReadError(
            name, f"image is {width}x{height} px, smaller than the {limits.min_size} px minimum"
        )


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.3g} MP"


def _to_uint8(arr: np.ndarray, bits: int) -> np.ndarray:
    """Scale by the declared bit depth so that exposure is preserved."""
    if arr.dtype == np.uint8 and bits >= 8:
        return arr
    top = float(2**bits - 1)
    scaled = np.clip(arr, 0, top).astype(np.float32) * np.float32(255.0 / top)
    return np.rint(scaled).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _looks_grayscale(rgb: np.ndarray) -> bool:
    """Colour files holding a grey picture (red-free exported as RGB)."""
    sample = rgb[::7, ::7].astype(np.int16)
    # JPEG chroma rounding leaves channels a level or two apart on grey content.
    return bool(
        np.abs(sample[..., 0] - sample[..., 1]).max() <= 2
        and np.abs(sample[..., 1] - sample[..., 2]).max() <= 2
    )


def _finish(image: FundusImage, *, grayscale_source: bool) -> FundusImage:
    if grayscale_source or _looks_grayscale(image.pixels):
        image.warnings.append(GRAYSCALE_WARNING)
    return image


def encode_jpeg(rgb: np.ndarray, quality: int = 92, frame: tuple[int, int] = CAMERA_FRAME) -> bytes:
    """The photo centred on a camera's black ``frame`` (width, height), as a JPEG, as cameras write them."""
    image = Image.fromarray(rgb)
    scale = min(frame[0] / image.width, frame[1] / image.height)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", frame)
    canvas.paste(image, ((frame[0] - image.width) // 2, (frame[1] - image.height) // 2))
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
