"""Real sample fundus photographs: fetched reproducibly, never committed.

The photos come from the sdist of ``retinalysis-fundusprep``, pinned by version
and sha256 and downloaded through pip, so the user's configured indexes,
mirrors and proxies apply. Only its ``samples/original/`` folder (11 photos and
one Topcon DICOM) is extracted, next to the CC0 retina photo that scikit-image
bundles: taken from the installed scikit-image when it holds the pinned file,
else from one pinned scikit-image wheel downloaded the same way (scikit-image
is not a pyfundus dependency). ``manifest.json`` records each file's checksum,
format, source dataset and licence.

A fetch is all or nothing: everything is written into a temporary folder
beside the destination, which replaces the destination only once complete.

Some of the source datasets forbid redistribution (DRIVE does), which is why
pyfundus fetches these files on the user's machine and ships none of them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version as installed_version
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from PIL import Image
from tqdm import tqdm

from ..paths import cache_root, sha256_file

logger = logging.getLogger(__name__)

SDIST_NAME = "retinalysis-fundusprep"
SDIST_VERSION = "1.1.0"
SDIST_SHA256 = "84111f0de5782f0305248f664a48d2e0336df823422708283758f675e8fe3611"

# scikit-image's retina photo (CC0), by the sha256 of the JPEG it ships, and one wheel that holds it. The
# wheel is named by platform and Python explicitly, so every machine downloads this very file whatever it runs.
RETINA_MEMBER = "skimage/data/retina.jpg"
RETINA_JPEG_SHA256 = "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6"
RETINA_WHEEL_VERSION = "0.25.2"
RETINA_WHEEL = f"scikit_image-{RETINA_WHEEL_VERSION}-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
RETINA_WHEEL_SHA256 = "a17e17eb8562660cc0d31bb55643a4da996a81944b82c54805c91b3fe66f4824"
RETINA_WHEEL_TARGET = ("--platform", "manylinux2014_x86_64", "--python-version", "3.12", "--implementation", "cp",
                       "--abi", "cp312")  # fmt: skip

MANIFEST_NAME = "manifest.json"
SKIMAGE_RETINA_NAME = "skimage_retina.png"
FETCH_HINT = "run `pyfundus data fetch-samples` (or pyfundus.data.samples.fetch_samples())"

# What pip prints when a download does not match --hash: the archive was then
# rejected before pip ran any build step on it.
_PIP_HASH_MISMATCH = "DO NOT MATCH THE HASHES"
_CHUNK = 1 << 20
# (magic bytes, offset, format): cheaper and stricter than trusting the suffix.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"DICM", 128, "DICOM"),
)


class SampleFetchError(RuntimeError):
    """Fetching the sample photos failed."""


class DownloadError(SampleFetchError):
    """pip could not download the pinned sdist; ``pip_output`` is what pip said."""

    def __init__(self, message: str, pip_output: str = "") -> None:
        super().__init__(message)
        self.pip_output = pip_output


class ChecksumMismatchError(SampleFetchError):
    """The downloaded sdist is not the pinned one; nothing was extracted."""


class UnsafeArchiveError(SampleFetchError):
    """The archive holds a member that could write outside the destination."""


@dataclass(frozen=True)
class Provenance:
    """Where a sample photo comes from, and how we know its licence."""

    dataset: str
    license: str
    license_source: str


# Keyed by filename prefix. The sdist has no statement about its images (its
# LICENSE is the AGPL-3.0 text for the package), so each licence below is the
# one the dataset publishes, and license_source says how that was established.
_SDIST_PROVENANCE = {
    "DRIVE_": Provenance(
        dataset="DRIVE",
        license=(
            "DRIVE terms: free of charge for research and education; copying, "
            "redistribution and unauthorised commercial use prohibited"
        ),
        license_source=(
            "'Using the database' on https://www.isi.uu.nl/Research/Databases/DRIVE/ "
            "(read from an archived copy of the page)"
        ),
    ),
    "CHASEDB1_": Provenance(
        dataset="CHASE_DB1",
        license="CC-BY-4.0",
        license_source=(
            "https://researchdata.kingston.ac.uk/96/ as cited by the torch-em CHASE_DB1 "
            "loader; the Kingston page itself was not read"
        ),
    ),
    "HRF_": Provenance(
        dataset="HRF",
        license="CC-BY-4.0",
        license_source=(
            "https://www5.cs.fau.de/research/data/fundus-images/ as cited by the torch-em "
            "HRF loader; the FAU page itself was not read"
        ),
    ),
    "PALM_": Provenance(
        dataset="PALM",
        license="unknown",
        license_source=(
            "not established: the challenge pages (palm.grand-challenge.org, IEEE DataPort "
            "doi:10.21227/55pk-8z03) give participation rules but no licence; the 2024 "
            "Scientific Data release (doi:10.1038/s41597-024-02911-2) was not checked"
        ),
    ),
}
_UNKNOWN_PROVENANCE = Provenance(
    dataset="unknown",
    license="unknown",
    license_source="no statement in the sdist; its AGPL-3.0 LICENSE covers the package, not named images",
)
_SKIMAGE_PROVENANCE = Provenance(
    dataset="Wikimedia Commons",
    license="CC0-1.0",
    license_source=(
        "docstring of skimage.data.retina: File:Fundus_photograph_of_normal_left_eye.jpg "
        "on commons.wikimedia.org (Häggström 2014)"
    ),
)


def samples_dir() -> Path:
    """Default folder of the sample photos: ``cache_root()/samples`` (not created until a fetch)."""
    return cache_root() / "samples"


def fetch_samples(dest: Path | None = None, *, force: bool = False, progress: bool = True) -> Path:
    """Fetch the sample photos into ``dest`` (default ``samples_dir()``) and return it.

    Does nothing when ``dest`` already holds a manifest whose every file still
    matches its sha256, unless ``force`` is set. All or nothing: on any error
    ``dest`` is left as it was.
    """
    folder = _resolve(dest)
    if not force and _is_complete(folder):
        logger.info("Sample photos already present in %s (checksums verified)", folder)
        return folder
    fetched_on = datetime.now(timezone.utc).date().isoformat()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(folder, "fetching")
    try:
        with tempfile.TemporaryDirectory(prefix="pyfundus-samples-") as tmp:
            _say(progress, f"downloading {SDIST_NAME}=={SDIST_VERSION} through pip (the sample photos)")
            archive = _download_sdist(Path(tmp))
            _verify_sha256(archive, SDIST_SHA256)
            extracted = _extract_samples(archive, staging, progress=progress)
            retina_jpeg, retina_version = _retina_jpeg(Path(tmp), progress)
        entries = [
            _entry(path, _provenance(path.name), SDIST_NAME, SDIST_VERSION, fetched_on)
            for path in extracted
        ]
        retina = _write_retina_png(retina_jpeg, staging)
        entries.append(_entry(retina, _SKIMAGE_PROVENANCE, "scikit-image", retina_version, fetched_on))
        _write_manifest(staging, entries)
        _replace_folder(folder, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the fetch succeeded
    logger.info("Fetched %d sample photos into %s", len(entries), folder)
    return folder


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _sibling(folder: Path, purpose: str) -> Path:
    """A new hidden folder beside ``folder``: the final step is then a rename within one file system.
    Made with mkdir, not mkdtemp, so it gets the usual permissions (the umask's), not mkdtemp's 0700."""
    sibling = folder.parent / f".{folder.name}-{purpose}-{os.getpid()}-{secrets.token_hex(4)}"
    sibling.mkdir()
    return sibling


def _replace_folder(folder: Path, staging: Path) -> None:
    """Put the complete ``staging`` folder where ``folder`` is, replacing an earlier fetch (or a part of one).

    A folder holding anything a fetch does not write is someone else's: it is refused, untouched.
    """
    if folder.exists():
        ours = {path.name for path in staging.iterdir()} | {f"{MANIFEST_NAME}.tmp"}
        foreign = sorted(path.name for path in folder.iterdir() if path.name not in ours)
        if foreign:
            raise SampleFetchError(
                f"{folder} holds files that are not sample photos ({', '.join(foreign[:5])}); nothing was "
                "changed: fetch into an empty or new folder (--dest)"
            )
        previous = _sibling(folder, "previous")
        os.replace(folder, previous / folder.name)
        try:
            os.replace(staging, folder)
        except OSError:
            os.replace(previous / folder.name, folder)  # put the earlier fetch back
            raise
        finally:
            shutil.rmtree(previous, ignore_errors=True)
    else:
        os.replace(staging, folder)


def load_manifest(dest: Path | None = None) -> list[dict[str, Any]]:
    """Return the manifest entries of the sample photos in ``dest``."""
    path = _resolve(dest) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No sample photos in {path.parent}: {FETCH_HINT}")
    return json.loads(path.read_text(encoding="utf-8"))


def licence_clear_paths(dest: Path | None = None) -> list[Path]:
    """The sample photos whose licence allows training (CC0, CC-BY), when fetched; [] when not."""
    try:
        entries = load_manifest(dest)
    except FileNotFoundError:
        return []
    folder = _resolve(dest)
    clear = [folder / e["name"] for e in entries if str(e.get("license", "")).upper().startswith(("CC0", "CC-BY"))]
    return [path for path in clear if path.is_file()]


def sample_paths(dest: Path | None = None) -> list[Path]:
    """Return the paths of all sample photos in ``dest``, in manifest order."""
    folder = _resolve(dest)
    paths = [folder / entry["name"] for entry in load_manifest(folder)]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"Sample photos missing from {folder} ({', '.join(missing)}): {FETCH_HINT}")
    return paths


def summary(dest: Path | None = None) -> str:
    """A short human-readable table of the fetched samples, for the CLI to print."""
    folder = _resolve(dest)
    entries = load_manifest(folder)
    lines = [f"{len(entries)} sample photos in {folder}"]
    lines += [f"  {e['name']:<20} {e['format']:<5} {e['dataset']:<10} {e['license']}" for e in entries]
    return "\n".join(lines)


def _resolve(dest: Path | None) -> Path:
    return samples_dir() if dest is None else Path(dest)


def _is_complete(folder: Path) -> bool:
    """True when the manifest is for the pinned sdist and every file still matches it."""
    try:
        entries = load_manifest(folder)
        versions = {e["package_version"] for e in entries if e["package"] == SDIST_NAME}
        if versions != {SDIST_VERSION}:
            logger.info("Manifest in %s is not for %s==%s; re-fetching", folder, SDIST_NAME, SDIST_VERSION)
            return False
        for entry in entries:
            path = folder / entry["name"]
            if not path.is_file() or sha256_file(path) != entry["sha256"]:
                logger.info("%s is missing or changed; re-fetching", path)
                return False
    except FileNotFoundError:
        return False
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("Unreadable manifest in %s (%s); re-fetching", folder, exc)
        return False
    return True


def _sdist_stem() -> str:
    # sdists are named after the normalised project name: dashes become underscores.
    return f"{SDIST_NAME.replace('-', '_')}-{SDIST_VERSION}"


def _download_sdist(workdir: Path) -> Path:
    """Download the pinned sdist with pip into ``workdir`` and return its path."""
    # Only this project must be an sdist (its 42 kB wheel has no photos); build dependencies may stay wheels.
    return _pip_download(workdir, SDIST_NAME, SDIST_VERSION, SDIST_SHA256, f"{_sdist_stem()}.tar.gz",
                         ("--no-binary", SDIST_NAME))  # fmt: skip


def _pip_download(
    workdir: Path, name: str, version: str, sha256: str, filename: str, options: tuple[str, ...]
) -> Path:
    """Download one pinned file through pip (``--require-hashes``) into ``workdir`` and return its path."""
    requirements = workdir / f"{name}.requirements.txt"
    requirements.write_text(f"{name}=={version} --hash=sha256:{sha256}\n", encoding="utf-8")
    out = workdir / "download"
    logger.info("Downloading %s==%s through pip", name, version)
    result = subprocess.run(_pip_download_command(requirements, out, options), capture_output=True, text=True,
                            check=False)  # fmt: skip
    output = result.stdout + result.stderr
    logger.debug("pip said:\n%s", output)
    if result.returncode != 0:
        if _PIP_HASH_MISMATCH in output:
            raise ChecksumMismatchError(
                f"pip rejected {name}=={version}: its sha256 is not {sha256}; nothing was extracted.\n{_tail(output)}"
            )
        raise DownloadError(
            f"pip could not download {name}=={version} (exit status {result.returncode}):\n{_tail(output)}",
            pip_output=output,
        )
    path = out / filename
    if not path.is_file():
        saved = sorted(p.name for p in out.glob("*"))
        raise DownloadError(f"pip did not save {filename} (it saved {saved})", pip_output=output)
    return path


def _pip_download_command(requirements: Path, out: Path, options: tuple[str, ...]) -> list[str]:
    # No --no-build-isolation: pip builds an sdist's metadata even for `download`,
    # and the fundusprep sdist takes its version from setuptools-scm, which is usually
    # not installed; without it setuptools reports 0.0.0 and pip discards the file.
    # In isolation pip installs setuptools, setuptools-scm and wheel from the
    # configured indexes. The sdist has no setup.py, so no code of its own runs,
    # and --require-hashes makes pip check the sha256 before that build starts.
    return [
        sys.executable, "-m", "pip", "download",
        "--no-deps",
        *options,
        "--require-hashes", "-r", str(requirements),
        # A credential prompt for a private index must fail, not hang.
        "--no-input",
        "-d", str(out),
    ]  # fmt: skip


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _verify_sha256(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumMismatchError(
            f"{path.name} has sha256 {actual}, expected {expected}; nothing was extracted"
        )
    logger.info("Verified sha256 of %s", path.name)


def _extract_samples(archive: Path, dest: Path, *, progress: bool) -> list[Path]:
    """Copy the files directly under ``samples/original/`` of ``archive`` into ``dest``.

    Every member of the archive is checked before anything is written, so an
    unsafe archive leaves ``dest`` untouched.
    """
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member)
        samples_folder = PurePosixPath(_sdist_stem(), "samples", "original")
        selected = [m for m in members if m.isfile() and PurePosixPath(m.name).parent == samples_folder]
        dest.mkdir(parents=True, exist_ok=True)
        with tqdm(
            total=sum(m.size for m in selected), unit="B", unit_scale=True,
            desc="Extracting samples", file=sys.stderr, disable=not progress,
        ) as bar:
            extracted = [_copy_member(tar, member, dest, bar) for member in selected]
    logger.info("Extracted %d files from %s into %s", len(extracted), archive.name, dest)
    return extracted


def _check_member(member: tarfile.TarInfo) -> None:
    """Reject what tarfile's 'data' filter rejects, and stricter: any link at all."""
    name = member.name
    if "\\" in name or PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise UnsafeArchiveError(f"absolute or non-POSIX path in archive: {name!r}")
    if ".." in PurePosixPath(name).parts:
        raise UnsafeArchiveError(f"path leaving the archive root: {name!r}")
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"link in archive: {name!r} -> {member.linkname!r}")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"special file in archive: {name!r}")


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, bar: tqdm) -> Path:
    # Flattened to dest/<basename>: the archive's folders never reach the disk.
    target = dest / PurePosixPath(member.name).name
    source = tar.extractfile(member)
    assert source is not None  # _extract_samples selects regular files only
    with source, target.open("wb") as sink:
        while chunk := source.read(_CHUNK):
            sink.write(chunk)
            bar.update(len(chunk))
    return target


def _retina_jpeg(workdir: Path, progress: bool) -> tuple[bytes, str]:
    """scikit-image's retina JPEG and the scikit-image version it came from: the installed copy when it
    is the pinned file (no download), else the pinned wheel's, through pip. Checked against its sha256."""
    installed = _installed_skimage_retina()
    if installed is not None:
        return installed
    _say(progress, f"downloading scikit-image=={RETINA_WHEEL_VERSION} through pip (15 MB; its CC0 retina photo)")
    return _retina_jpeg_from_wheel(workdir)


def _retina_jpeg_from_wheel(workdir: Path) -> tuple[bytes, str]:
    wheel = _pip_download(workdir, "scikit-image", RETINA_WHEEL_VERSION, RETINA_WHEEL_SHA256, RETINA_WHEEL,
                          ("--only-binary", ":all:", *RETINA_WHEEL_TARGET))  # fmt: skip
    try:
        with zipfile.ZipFile(wheel) as archive:
            jpeg = archive.read(RETINA_MEMBER)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise SampleFetchError(f"{wheel.name} has no readable {RETINA_MEMBER}: {exc}") from exc
    if hashlib.sha256(jpeg).hexdigest() != RETINA_JPEG_SHA256:
        raise ChecksumMismatchError(f"{RETINA_MEMBER} in {wheel.name} is not the pinned file; nothing was extracted")
    return jpeg, RETINA_WHEEL_VERSION


def _installed_skimage_retina() -> tuple[bytes, str] | None:
    # Found without importing scikit-image (slow, and not needed for one file).
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "retina.jpg"
    try:
        jpeg = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(jpeg).hexdigest() != RETINA_JPEG_SHA256:
        logger.info("%s is not the pinned retina photo; downloading the pinned one", path)
        return None
    return jpeg, installed_version("scikit-image")


def _write_retina_png(jpeg: bytes, dest: Path) -> Path:
    # PNG, decoded as skimage.data.retina() decodes it: the same pixels, stored losslessly.
    target = dest / SKIMAGE_RETINA_NAME
    Image.open(io.BytesIO(jpeg)).convert("RGB").save(target, format="PNG")
    return target


def _provenance(name: str) -> Provenance:
    for prefix, provenance in _SDIST_PROVENANCE.items():
        if name.startswith(prefix):
            return provenance
    return _UNKNOWN_PROVENANCE


def _sniff_format(path: Path) -> str:
    with path.open("rb") as stream:
        head = stream.read(132)
    for magic, offset, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    return "unknown"


def _entry(path: Path, provenance: Provenance, package: str, version: str, fetched_on: str) -> dict[str, Any]:
    return {
        "name": path.name,
        "sha256": sha256_file(path),
        "size": path.stat().st_size,
        "format": _sniff_format(path),
        "dataset": provenance.dataset,
        "license": provenance.license,
        "license_source": provenance.license_source,
        "package": package,
        "package_version": version,
        "fetched_on": fetched_on,
    }


def _write_manifest(dest: Path, entries: list[dict[str, Any]]) -> None:
    path = dest / MANIFEST_NAME
    staging = path.with_suffix(".json.tmp")
    ordered = sorted(entries, key=lambda e: e["name"])
    staging.write_text(json.dumps(ordered, indent=2) + "\n", encoding="utf-8")
    # Replaced in one step: a crash never leaves a manifest that vouches for half the files.
    staging.replace(path)
