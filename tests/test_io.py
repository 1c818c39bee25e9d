"""Reading camera output: formats, DICOM, and every way a file can be bad."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import skimage.data
from PIL import Image, ImageOps
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    OphthalmicPhotography8BitImageStorage,
    generate_uid,
)

from pyfundus import io as pyfundus_io
from pyfundus.io import (
    DEFAULT_MAX_PIXELS,
    GRAYSCALE_WARNING,
    SUPPORTED_EXTENSIONS,
    FundusImage,
    ImageReadError,
    declared_size,
    is_probably_image,
    read_image,
)


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    """A real 1411x1411 fundus photograph (CC0, bundled with scikit-image)."""
    return skimage.data.retina()


@pytest.fixture(scope="module")
def retina_jpeg(retina) -> bytes:
    return _encode(retina, "JPEG", quality=90)


def _encode(pixels: np.ndarray | Image.Image, fmt: str, **params) -> bytes:
    im = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    if fmt == "PNG":
        params.setdefault("compress_level", 1)  # speed; the file is still a valid PNG
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _reason(excinfo: pytest.ExceptionInfo[ImageReadError]) -> str:
    return excinfo.value.reason


def _colour_card(h: int = 200, w: int = 300) -> np.ndarray:
    """Smooth colour image with a distinctive top-left corner, small enough to be fast."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 90)], axis=2).astype(np.uint8)
    img[:40, :40] = (250, 20, 20)
    return img


# --- formats ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "suffix", "tolerance"),
    [("JPEG", ".jpg", 3.0), ("PNG", ".png", 0.0), ("TIFF", ".tif", 0.0), ("BMP", ".bmp", 0.0)],
)
def test_real_fundus_round_trips_through_each_format(tmp_path, retina, fmt, suffix, tolerance):
    path = _write(tmp_path / f"retina{suffix}", _encode(retina, fmt))

    image = read_image(path)

    assert isinstance(image, FundusImage)
    assert image.format == fmt
    assert image.path == str(path)
    assert image.original_size == (1411, 1411)
    assert image.scale == 1.0
    assert image.pixels.shape == retina.shape and image.pixels.dtype == np.uint8
    assert image.pixels.flags.c_contiguous
    assert np.abs(image.pixels.astype(int) - retina).mean() <= tolerance
    assert image.warnings == []
    assert image.eye is image.patient_id is image.sop_instance_uid is None


def test_format_comes_from_content_not_extension(tmp_path):
    card = _colour_card()
    png_named_jpg = _write(tmp_path / "scan.jpg", _encode(card, "PNG"))
    jpeg_no_extension = _write(tmp_path / "3f2a9c1e-uuid", _encode(card, "JPEG"))

    assert read_image(png_named_jpg).format == "PNG"
    assert np.array_equal(read_image(png_named_jpg).pixels, card)
    assert read_image(jpeg_no_extension).format == "JPEG"


def test_bytes_array_and_pil_sources(retina_jpeg):
    from_bytes = read_image(retina_jpeg)
    assert from_bytes.format == "JPEG" and from_bytes.path is None

    card = _colour_card()
    from_array = read_image(card)
    assert from_array.format == "ARRAY" and from_array.original_size == (300, 200)
    assert np.array_equal(from_array.pixels, card)

    from_pil = read_image(Image.open(io.BytesIO(_encode(card, "PNG"))))
    assert from_pil.format == "PNG" and np.array_equal(from_pil.pixels, card)


def test_grayscale_array_is_replicated_with_a_warning():
    gray = np.tile(np.arange(256, dtype=np.uint8), (200, 1))
    image = read_image(gray)
    assert image.pixels.shape == (200, 256, 3)
    assert all(np.array_equal(image.pixels[..., c], gray) for c in range(3))
    assert GRAYSCALE_WARNING in image.warnings


def test_array_of_the_wrong_kind_is_refused():
    with pytest.raises(ImageReadError, match="uint8"):
        read_image(np.zeros((200, 200, 3), np.float32))
    with pytest.raises(ImageReadError, match="shape"):
        read_image(np.zeros((200, 200, 4), np.uint8))


def test_unsupported_source_type_is_a_type_error():
    with pytest.raises(TypeError):
        read_image(12345)  # type: ignore[arg-type]


# --- colour modes and bit depths ----------------------------------------------------


def test_grayscale_jpeg_warns_red_free():
    gray = np.tile(np.linspace(0, 255, 256).astype(np.uint8), (200, 1))
    image = read_image(_encode(gray, "JPEG"))
    assert image.pixels.shape == (200, 256, 3)
    assert np.array_equal(image.pixels[..., 0], image.pixels[..., 2])
    assert image.warnings == [GRAYSCALE_WARNING]


def test_grey_picture_saved_as_rgb_also_warns():
    gray = np.tile(np.linspace(0, 255, 256).astype(np.uint8), (200, 1))
    image = read_image(_encode(np.dstack([gray] * 3), "JPEG"))
    assert GRAYSCALE_WARNING in image.warnings


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_is_scaled_by_bit_depth(fmt):
    ramp = np.linspace(0, 65535, 300 * 200).astype(np.uint16).reshape(200, 300)
    ramp[0, :10] = 1000  # dark pixels stay dark: no stretching to the image range
    image = read_image(_encode(ramp, fmt))
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    assert image.pixels.shape == (200, 300, 3)
    assert np.array_equal(image.pixels[..., 1], expected)
    assert image.pixels[0, 0, 0] == 4
    assert GRAYSCALE_WARNING in image.warnings


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16_bit_colour_keeps_its_exposure(ext):
    bgr16 = np.zeros((200, 300, 3), np.uint16)
    bgr16[...] = (30000, 1000, 51400)  # B, G, R as cv2 writes them
    ok, buf = cv2.imencode(ext, bgr16)
    assert ok
    image = read_image(buf.tobytes())
    # 16 -> 8 bits by the declared depth: 51400/65535*255 ~= 200.
    assert np.allclose(image.pixels[100, 100], (200, 4, 117), atol=1)


def test_rgba_is_composited_onto_black():
    rgba = np.zeros((200, 300, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:, 150:, 3] = 255  # left half fully transparent, colour hidden
    image = read_image(_encode(rgba, "PNG"))
    assert image.pixels.shape == (200, 300, 3)
    assert np.all(image.pixels[:, :150] == 0)
    assert np.all(image.pixels[:, 150:] == (200, 100, 50))


@pytest.mark.parametrize("mode", ["P", "CMYK"])
def test_palette_and_cmyk_become_rgb(mode):
    colour = np.full((200, 200, 3), (200, 100, 50), np.uint8)
    fmt = "PNG" if mode == "P" else "JPEG"
    image = read_image(_encode(Image.fromarray(colour).convert(mode), fmt))
    assert image.pixels.shape == (200, 200, 3)
    assert np.abs(image.pixels[100, 100].astype(int) - (200, 100, 50)).max() <= 50
    assert image.pixels[100, 100, 0] > image.pixels[100, 100, 1] > image.pixels[100, 100, 2]


def test_exif_orientation_is_applied():
    card = _colour_card(200, 300)  # landscape, red block top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    image = read_image(_encode(Image.fromarray(card), "JPEG", exif=exif.tobytes(), quality=95))

    assert image.pixels.shape == (300, 200, 3)
    assert image.original_size == (200, 300)
    expected = np.rot90(card, k=-1)
    assert np.abs(image.pixels.astype(int) - expected).mean() < 3
    assert tuple(image.pixels[10, -10]) > (200, 0, 0)  # red block now top-right


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_every_exif_orientation_turns_the_picture_as_pillow_does(fmt, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.fromarray(_colour_card(200, 300)), fmt, exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    image = read_image(data)
    assert np.array_equal(image.pixels, expected)
    assert image.original_size == (expected.shape[1], expected.shape[0])


# --- memory: reduced and bounded decodes -------------------------------------------------


def test_a_png_too_large_to_keep_whole_is_reduced_like_a_jpeg_draft(monkeypatch):
    monkeypatch.setattr(pyfundus_io, "REDUCE_ABOVE_BYTES", 1 << 20)  # 1600x1200 RGB is 5.5 MiB
    card = cv2.resize(_colour_card(), (1600, 1200), interpolation=cv2.INTER_LINEAR)
    rgba = np.dstack([card, np.full(card.shape[:2], 128, np.uint8)])  # half transparent: composited on black
    image = read_image(_encode(rgba, "PNG"), min_side=384)
    assert image.pixels.shape == (600, 800, 3) and image.scale == 0.5  # 1/4 would leave 300 < 384
    premultiplied = (card.astype(np.float64) * 128 / 255).reshape(600, 2, 800, 2, 3).mean(axis=(1, 3))
    assert np.abs(image.pixels - premultiplied).max() <= 2, "box means of the composited picture"
    assert read_image(_encode(rgba, "PNG")).pixels.shape == (1200, 1600, 3), "without min_side: whole"


def test_decodes_share_a_memory_budget_and_one_larger_than_it_runs_alone(monkeypatch):
    monkeypatch.setattr(pyfundus_io, "DECODE_MEMORY", pyfundus_io._DecodeMemory(budget=1 << 20))
    running, most = [], []
    convert = pyfundus_io._pil_to_rgb  # runs with the decoded picture in memory

    def watched(im, factor=1):
        running.append(im)
        most.append(len(running))
        time.sleep(0.05)  # long enough for the other threads to try
        try:
            return convert(im, factor)
        finally:
            running.remove(im)

    monkeypatch.setattr(pyfundus_io, "_pil_to_rgb", watched)
    png = _encode(cv2.resize(_colour_card(), (600, 600)), "PNG")  # 1.4 MiB decoded: over the budget
    small = _encode(_colour_card(20, 30), "PNG")  # 2.4 KiB: two of these fit together
    with ThreadPoolExecutor(4) as pool:
        shapes = [image.pixels.shape for image in pool.map(lambda data: read_image(data, min_size=8), [png] * 4)]
        assert max(most) == 1 and shapes == [(600, 600, 3)] * 4
        most.clear()
        list(pool.map(lambda data: read_image(data, min_size=8), [small] * 4))
        assert max(most) > 1, "small decodes still run side by side"
    assert pyfundus_io.DECODE_MEMORY.in_use == 0


def test_declared_size_reads_the_header_only(tmp_path, fundus_small):
    png = _write(tmp_path / "a.png", _encode(_colour_card(), "PNG"))
    assert declared_size(png) == (300, 200)
    assert declared_size(_dicom_file(tmp_path / "b.dcm", fundus_small[:, :200])) == (200, 320)
    assert declared_size(_write(tmp_path / "c.png", b"\x89PNG\r\n\x1a\n nonsense")) is None
    assert declared_size(tmp_path / "missing.png") is None


# --- reduced-size JPEG decoding ------------------------------------------------------


@pytest.fixture(scope="module")
def camera_jpeg() -> bytes:
    """A 2304x1728 JPEG, the size of a common fundus camera capture."""
    big = cv2.resize(_colour_card(), (2304, 1728), interpolation=cv2.INTER_LINEAR)
    return _encode(big, "JPEG", quality=90)


@pytest.mark.parametrize(
    ("min_side", "scale", "shape"),
    [
        (384, 0.25, (432, 576, 3)),
        (800, 0.5, (864, 1152, 3)),
        (200, 0.125, (216, 288, 3)),
        (1000, 1.0, (1728, 2304, 3)),
        (None, 1.0, (1728, 2304, 3)),
    ],
)
def test_draft_decode_picks_the_largest_reduction_that_keeps_min_side(
    camera_jpeg, min_side, scale, shape
):
    image = read_image(camera_jpeg, min_side=min_side)
    assert image.scale == scale
    assert image.pixels.shape == shape
    assert image.original_size == (2304, 1728)
    assert min(image.pixels.shape[:2]) >= (min_side or 0)


def test_draft_decode_content_matches_a_full_decode(camera_jpeg):
    reduced = read_image(camera_jpeg, min_side=384).pixels
    full = read_image(camera_jpeg).pixels
    shrunk = cv2.resize(full, (576, 432), interpolation=cv2.INTER_AREA)
    assert np.abs(reduced.astype(int) - shrunk).mean() < 3


def test_other_formats_ignore_min_side():
    image = read_image(_encode(cv2.resize(_colour_card(), (1600, 1200)), "PNG"), min_side=384)
    assert image.scale == 1.0 and image.pixels.shape == (1200, 1600, 3)


# --- bad files ---------------------------------------------------------------------------


def test_error_names_the_file_and_pickles(tmp_path):
    path = _write(tmp_path / "empty.jpg", b"")
    with pytest.raises(ImageReadError) as excinfo:
        read_image(path)
    err = excinfo.value
    assert isinstance(err, ValueError)
    assert err.path == str(path) and err.reason == "file is empty"
    assert str(err) == f"{path}: file is empty"
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.path, clone.reason, str(clone)) == (err.path, err.reason, str(err))


def test_an_error_after_reading_carries_the_hash_of_the_bytes_read(tmp_path, retina_jpeg):
    cut = retina_jpeg[: len(retina_jpeg) // 2]
    with pytest.raises(ImageReadError) as excinfo:
        read_image(_write(tmp_path / "cut.jpg", cut))
    assert excinfo.value.sha256 == hashlib.sha256(cut).hexdigest()
    assert pickle.loads(pickle.dumps(excinfo.value)).sha256 == excinfo.value.sha256
    with pytest.raises(ImageReadError) as excinfo:
        read_image(tmp_path / "missing.jpg")
    assert excinfo.value.sha256 is None, "nothing was read"


def test_truncated_jpeg(tmp_path, retina_jpeg):
    path = _write(tmp_path / "cut.jpg", retina_jpeg[: len(retina_jpeg) // 2])
    with pytest.raises(ImageReadError) as excinfo:
        read_image(path)
    assert _reason(excinfo) == "truncated JPEG (file ends early)"
    assert str(path) in str(excinfo.value)


def test_truncated_png(retina):
    png = _encode(retina, "PNG")
    with pytest.raises(ImageReadError, match="truncated PNG"):
        read_image(png[: len(png) // 2])


def test_corrupt_jpeg_data_that_libjpeg_rejects(retina_jpeg):
    # Random bytes in the entropy-coded data: this particular damage makes
    # libjpeg give up. (Milder damage decodes to garbage without an error;
    # judging that is the quality model's job, not the reader's.)
    damaged = bytearray(retina_jpeg)
    middle = len(damaged) // 2
    damaged[middle : middle + 2000] = np.random.default_rng(0).bytes(2000)
    with pytest.raises(ImageReadError, match="corrupt or unsupported JPEG data"):
        read_image(bytes(damaged))


def test_jpeg_with_a_broken_header():
    with pytest.raises(ImageReadError, match="corrupt JPEG header"):
        read_image(b"\xff\xd8\xff\xe0" + b"\x00" * 200)


@pytest.mark.parametrize(
    "content",
    [
        b"Patient list\nSMITH, JOHN\n" * 20,
        b"BMI report: " + b"x" * 200,  # starts like a BMP
        np.random.default_rng(1).bytes(5000),
    ],
    ids=["text", "bm-text", "random"],
)
def test_non_image_named_jpg(tmp_path, content):
    path = _write(tmp_path / "photo.jpg", content)
    with pytest.raises(ImageReadError) as excinfo:
        read_image(path)
    assert _reason(excinfo).startswith("not an image file")


def test_known_but_unsupported_format_says_so():
    with pytest.raises(ImageReadError, match="GIF files are not supported"):
        read_image(_encode(_colour_card(), "GIF"))


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError) as excinfo:
        read_image(tmp_path / "nope.jpg")
    assert _reason(excinfo) == "file not found"


def test_directory(tmp_path):
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path)


@pytest.mark.skipif(os.name != "posix", reason="file permission bits are POSIX")
def test_unreadable_file(tmp_path, retina_jpeg):
    path = _write(tmp_path / "locked.jpg", retina_jpeg)
    path.chmod(0)
    code = (
        "import sys\nfrom pyfundus.io import ImageReadError, read_image\n"
        "try:\n    read_image(sys.argv[1])\nexcept ImageReadError as e:\n    print(e)\n"
    )
    command = [sys.executable, "-c", code, str(path)]
    if os.geteuid() == 0:
        # Root reads anything; drop the capability that lets it, as a clinic's service account would lack it.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.fail("running as root without setpriv (util-linux): cannot test an unreadable file")
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search", "--", *command]
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    finally:
        path.chmod(0o600)
    assert "permission denied" in out and "locked.jpg" in out


def test_tiny_image():
    with pytest.raises(ImageReadError) as excinfo:
        read_image(_encode(np.zeros((30, 40, 3), np.uint8), "PNG"))
    assert _reason(excinfo) == "image is 40x30 px, smaller than the 128 px minimum"
    small = read_image(_encode(np.zeros((30, 40, 3), np.uint8), "PNG"), min_size=16)
    assert small.original_size == (40, 30)


def test_over_the_pixel_cap(retina_jpeg):
    with pytest.raises(ImageReadError) as excinfo:
        read_image(retina_jpeg, max_pixels=1_000_000)
    assert _reason(excinfo) == (
        "image is 1411x1411 = 1.99 MP, over the 1 MP cap (possible decompression bomb)"
    )


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring a huge image, with almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (30000, 30000, "image is 30000x30000 = 900 MP, over the 100 MP cap"),
        # Between Pillow's warning (89 MP) and error (179 MP) limits.
        (12000, 10000, "image is 12000x10000 = 120 MP, over the 100 MP cap"),
    ],
)
def test_decompression_bomb_header_is_refused_by_our_check(tmp_path, width, height, message):
    path = _write(tmp_path / "bomb.png", _png_header_only(width, height))
    assert path.stat().st_size < 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's bomb warning must not leak out either
        with pytest.raises(ImageReadError) as excinfo:
            read_image(path)
    assert _reason(excinfo) == message + " (possible decompression bomb)"
    assert DEFAULT_MAX_PIXELS == 100_000_000


# --- folder scanning helpers ---------------------------------------------------------------


def test_supported_extensions():
    assert set(SUPPORTED_EXTENSIONS) == {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".dcm"}
    assert all(ext == ext.lower() for ext in SUPPORTED_EXTENSIONS)


def test_is_probably_image(tmp_path, retina_jpeg):
    assert is_probably_image(_write(tmp_path / "a.txt", retina_jpeg))  # content wins
    assert not is_probably_image(_write(tmp_path / "b.jpg", b"not a picture"))
    assert not is_probably_image(_write(tmp_path / "c.jpg", b""))
    assert not is_probably_image(tmp_path / "missing.jpg")
    assert not is_probably_image(tmp_path)
    dicom_without_extension = tmp_path / "IM000001"
    _dicom_file(dicom_without_extension, _colour_card())
    assert is_probably_image(dicom_without_extension)
    # No preamble: only the extension can tell.
    assert is_probably_image(_write(tmp_path / "old.dcm", _raw_dataset_bytes(_gray_dataset())))
    assert not is_probably_image(_write(tmp_path / "old", _raw_dataset_bytes(_gray_dataset())))


def test_io_module_does_not_import_torch():
    code = "import sys, pyfundus.io, pyfundus.preprocess; sys.exit('torch' in sys.modules)"
    repo = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=repo, timeout=60).returncode == 0


# --- DICOM --------------------------------------------------------------------------------


def _dicom_file(
    path: Path,
    pixels: np.ndarray | None,
    *,
    photometric: str = "RGB",
    transfer_syntax: str = ExplicitVRLittleEndian,
    frames: int = 1,
    **tags,
) -> Path:
    """An Ophthalmic Photography 8-bit file; ``pixels`` is (H,W,3), (H,W) or (F,H,W,3)."""
    frame = pixels[0] if frames > 1 else pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = OphthalmicPhotography8BitImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OP"
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    if frame is not None:
        colour = frame.ndim == 3
        ds.Rows, ds.Columns = frame.shape[:2]
        ds.SamplesPerPixel = 3 if colour else 1
        ds.PhotometricInterpretation = photometric
        if colour:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        if transfer_syntax == JPEGBaseline8Bit:
            # 4:2:2 chroma subsampling, as YBR_FULL_422 declares.
            ds.PixelData = encapsulate([_encode(frame, "JPEG", quality=95, subsampling=1)])
        else:
            ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _gray_dataset() -> Dataset:
    ds = Dataset()
    ds.PatientID = "OLD-7"
    ds.Laterality = "R"
    ds.Rows, ds.Columns = 150, 160
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = _twelve_bit_ramp().tobytes()
    return ds


def _twelve_bit_ramp() -> np.ndarray:
    return (np.arange(150 * 160).reshape(150, 160) % 4096).astype(np.uint16)


def _raw_dataset_bytes(ds: Dataset) -> bytes:
    """Old-style file: no preamble, no DICM, no file meta."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    return fp.getvalue()


@pytest.fixture(scope="module")
def fundus_small(retina) -> np.ndarray:
    return cv2.resize(retina, (320, 320), interpolation=cv2.INTER_AREA)


def test_dicom_uncompressed_rgb_with_identity_tags(tmp_path, fundus_small):
    study, path = generate_uid(), tmp_path / "IM0001"
    tags = {"ImageLaterality": "L", "PatientID": "PAT-0042", "StudyInstanceUID": study}
    _dicom_file(path, fundus_small, **tags)

    image = read_image(path)

    assert image.format == "DICOM"
    assert np.array_equal(image.pixels, fundus_small)
    assert image.pixels.flags.c_contiguous
    assert image.original_size == (320, 320)
    assert image.eye == "L"
    assert image.patient_id == "PAT-0042"
    assert image.study_uid == study
    assert image.sop_instance_uid == pydicom.dcmread(path).SOPInstanceUID
    assert image.warnings == []


def test_dicom_jpeg_baseline_ybr(tmp_path, fundus_small):
    path = _dicom_file(
        tmp_path / "jpeg.dcm",
        fundus_small,
        photometric="YBR_FULL_422",
        transfer_syntax=JPEGBaseline8Bit,
        ImageLaterality="R",
    )
    image = read_image(path)
    assert image.pixels.shape == (320, 320, 3)
    # Converted to RGB: close to the source, not left in YCbCr.
    assert np.abs(image.pixels.astype(int) - fundus_small).mean() < 3
    assert image.eye == "R"


def test_dicom_monochrome2_warns(tmp_path, fundus_small):
    green = np.ascontiguousarray(fundus_small[..., 1])
    image = read_image(_dicom_file(tmp_path / "redfree.dcm", green, photometric="MONOCHROME2"))
    assert image.pixels.shape == (320, 320, 3)
    assert np.array_equal(image.pixels[..., 0], green)
    assert GRAYSCALE_WARNING in image.warnings


def test_dicom_without_pixel_data(tmp_path):
    path = _dicom_file(tmp_path / "report.dcm", None, PatientID="X")
    with pytest.raises(ImageReadError, match="DICOM has no pixel data"):
        read_image(path)


def test_dicom_with_dimensions_but_no_pixel_data(tmp_path, fundus_small):
    path = _dicom_file(tmp_path / "stripped.dcm", fundus_small)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ImageReadError) as excinfo:
        read_image(path)
    assert _reason(excinfo) == "DICOM has no pixel data (cut short, or stripped)"


@pytest.mark.parametrize("tag, value", [("Rows", 300), ("Columns", 300), ("Rows", 330)])
def test_dicom_rows_or_columns_that_disagree_with_the_pixel_data_are_an_error_naming_it(
    tmp_path, fundus_small, tag, value
):
    # Issue 17: a Topcon capture with Rows=2000 (really 2136) was decoded cropped and graded; with
    # Columns=3200 (really 3216) it was sheared and failed as "no field of view found".
    path = _dicom_file(tmp_path / "lying.dcm", fundus_small)
    ds = pydicom.dcmread(path)
    setattr(ds, tag, value)
    ds.save_as(path)
    rows, columns = (value, 320) if tag == "Rows" else (320, value)
    with pytest.raises(ImageReadError) as excinfo:
        read_image(path)
    assert _reason(excinfo) == (
        f"DICOM Rows/Columns do not match its pixel data: {rows} rows x {columns} columns x 3 sample(s) x 8 bits "
        f"x 1 frame(s) need {rows * columns * 3} bytes, the file holds {320 * 320 * 3}"
    )
    assert not excinfo.value.incomplete, "a lying header is not a file still being written"


def test_a_dicom_cut_anywhere_is_incomplete_and_a_whole_one_reads(tmp_path, fundus_small):
    whole = _dicom_file(tmp_path / "whole.dcm", fundus_small).read_bytes()
    assert read_image(whole).pixels.shape == (320, 320, 3)
    for cut in (150, 300, 500, 700, len(whole) // 2, len(whole) - 1):
        with pytest.raises(ImageReadError) as excinfo:
            read_image(whole[:cut])
        assert excinfo.value.incomplete, (cut, _reason(excinfo))
    with pytest.raises(ImageReadError, match=r"truncated DICOM \(pixel data ends early: 153599 of 307200 bytes\)"):
        read_image(whole[: len(whole) - 153601])


def test_dicom_multiframe_uses_the_first_frame(tmp_path, fundus_small):
    frames = np.stack([fundus_small, fundus_small[::-1]])
    image = read_image(_dicom_file(tmp_path / "multi.dcm", frames, frames=2))
    assert np.array_equal(image.pixels, fundus_small)
    assert image.warnings == ["multi-frame DICOM (2 frames): only the first frame is scored"]


def test_dicom_preamble_then_garbage(tmp_path):
    path = _write(tmp_path / "bad.dcm", b"\0" * 128 + b"DICM" + np.random.default_rng(2).bytes(600))
    with pytest.raises(ImageReadError) as excinfo:
        read_image(path)
    assert "DICOM" in _reason(excinfo)


def test_dicom_laterality_falls_back_and_normalises(tmp_path, fundus_small):
    cases = {
        "a": {"Laterality": "R"},
        "b": {"ImageLaterality": "B", "Laterality": "L"},  # both eyes: fall back
        "c": {"ImageLaterality": "U"},  # unpaired organ: no eye
    }
    found = {
        name: read_image(_dicom_file(tmp_path / name, fundus_small, **tags)).eye
        for name, tags in cases.items()
    }
    assert found == {"a": "R", "b": "L", "c": None}


def test_dicom_pixel_cap_is_checked_from_the_header(tmp_path, fundus_small):
    path = _dicom_file(tmp_path / "big.dcm", fundus_small)
    with pytest.raises(ImageReadError, match=r"320x320 = 0.102 MP, over the 0.05 MP cap"):
        read_image(path, max_pixels=50_000)


def test_dicom_transfer_syntax_without_a_decoder(tmp_path, fundus_small):
    path = _dicom_file(tmp_path / "video.dcm", fundus_small)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2 video
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 64])
    ds.save_as(path)
    expected = r"transfer syntax .*1\.2\.840\.10008\.1\.2\.4\.100.* no installed decoder"
    with pytest.raises(ImageReadError, match=expected):
        read_image(path)


def test_preamble_less_dicom_with_dcm_extension(tmp_path):
    path = _write(tmp_path / "legacy.dcm", _raw_dataset_bytes(_gray_dataset()))
    image = read_image(path)
    # MONOCHROME1 is inverted; 12 stored bits are scaled by 4095, not the data range.
    expected = 255 - np.rint(_twelve_bit_ramp() * (255 / 4095)).astype(np.uint8)
    assert np.array_equal(image.pixels[..., 0], expected)
    assert image.eye == "R" and image.patient_id == "OLD-7"
    assert GRAYSCALE_WARNING in image.warnings


def test_preamble_less_bytes_without_dcm_extension_are_not_guessed(tmp_path):
    path = _write(tmp_path / "legacy.bin", _raw_dataset_bytes(_gray_dataset()))
    with pytest.raises(ImageReadError, match="not an image file"):
        read_image(path)
