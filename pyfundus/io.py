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
* File names and DICOM tags are patient data: this module never logs them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
import warnings
from dataclasses import dataclass, field
from typing import IO, Any, Iterator, Union

import numpy as np
from PIL import (
    BmpImagePlugin,
    Image,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
)

__all__ = [
    "CAMERA_FRAME",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_EXTENSIONS",
    "FundusImage",
    "ImageReadError",
    "encode_jpeg",
    "is_probably_image",
    "read_image",
]

DEFAULT_MAX_PIXELS = 100_000_000
# A file is read whole (so its hash is of exactly the bytes decoded); no fundus capture comes near this.
DEFAULT_MAX_BYTES = 1 << 30
# The frame of the FQS cameras' photos (Gong et al., arXiv:2411.12273): 2304 x 1728.
CAMERA_FRAME = (2304, 1728)

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
        oriented = ImageOps.exif_transpose(im)
        pixels, gray = _pil_to_rgb(oriented)
    except Exception as e:  # Pillow raises assorted types for undecodable data
        raise _decode_failure(name, im.format or "image", e) from e
    image = FundusImage(
        pixels=pixels, path=None, format=im.format or "PIL", original_size=oriented.size
    )
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
    scale = _draft(im, limits.min_side) if fmt == "JPEG" else 1.0
    try:
        with _pillow_bomb_warning_silenced(width * height):
            im.load()
        oriented = ImageOps.exif_transpose(im)
        pixels, gray = _pil_to_rgb(oriented)
    except Exception as e:  # Pillow raises assorted types for undecodable data
        raise _decode_failure(name, fmt, e) from e
    if oriented.size != im.size:
        width, height = height, width
    image = FundusImage(
        pixels=pixels, path=None, format=fmt, original_size=(width, height), scale=scale
    )
    return _finish(image, grayscale_source=gray)


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


def _pil_to_rgb(im: Image.Image) -> tuple[np.ndarray, bool]:
    """RGB uint8 pixels, and whether the source had a single channel."""
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
    return np.ascontiguousarray(np.asarray(im.convert("RGBA").convert("RGBa"))[..., :3])


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
