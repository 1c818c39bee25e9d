"""pyfundus.data.samples: the real fetch through pip, the manifest, and tar safety."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tarfile
import zipfile
from datetime import date
from pathlib import Path
from typing import NoReturn

import pytest
from conftest import skip_or_fail
from PIL import Image

from pyfundus import paths
from pyfundus.data import samples

SDIST_SAMPLES = {
    "CHASEDB1_08L.png", "CHASEDB1_12R.png", "DRIVE_22.png", "DRIVE_40.png",
    "HRF_04_g.jpg", "HRF_07_dr.jpg", "PALM_TR_P0185.png", "cropped.png",
    "issue_1.png", "issue_2.png", "issue_3.dcm", "sample_dark.png",
}
SAMPLES_FOLDER = f"retinalysis_fundusprep-{samples.SDIST_VERSION}/samples/original"
# What pip prints when no configured index answered: urllib3's retry warnings,
# or, with retries off, only an empty version list for a project that exists.
OFFLINE_MARKERS = (
    "NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
    "Name or service not known", "Network is unreachable", "ConnectTimeoutError", "ProxyError",
    "(from versions: none)",
)


def _skip_or_fail_offline(exc: samples.DownloadError) -> NoReturn:
    lines = exc.pip_output.splitlines()
    offline = [line for line in lines if any(marker in line for marker in OFFLINE_MARKERS)]
    if not offline:
        raise exc
    reason = f"pip could not reach a package index serving {samples.SDIST_NAME} (offline?): {offline[0].strip()}"
    skip_or_fail(reason)


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real fetch per test session: pip download, verify, extract, manifest."""
    try:
        return samples.fetch_samples(tmp_path_factory.mktemp("samples"), progress=False)
    except samples.DownloadError as exc:
        _skip_or_fail_offline(exc)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.iterdir()}


def test_fetch_extracts_the_sdist_samples_and_the_skimage_retina(fetched: Path) -> None:
    names = {p.name for p in samples.sample_paths(fetched)}
    assert names == SDIST_SAMPLES | {samples.SKIMAGE_RETINA_NAME}
    assert {p.name for p in fetched.iterdir()} == names | {samples.MANIFEST_NAME}


def test_manifest_matches_the_files_on_disk(fetched: Path) -> None:
    entries = samples.load_manifest(fetched)
    assert len(entries) == 13
    for entry in entries:
        path = fetched / entry["name"]
        assert entry["sha256"] == _sha256(path), entry["name"]
        assert entry["size"] == path.stat().st_size
        assert entry["license"] and entry["license_source"] and entry["dataset"]
        date.fromisoformat(entry["fetched_on"])
    by_name = {e["name"]: e for e in entries}
    assert by_name["issue_3.dcm"]["format"] == "DICOM"
    assert by_name["HRF_04_g.jpg"]["format"] == "JPEG"
    assert by_name["DRIVE_22.png"]["dataset"] == "DRIVE"
    assert by_name["CHASEDB1_08L.png"]["dataset"] == "CHASE_DB1"
    assert by_name["sample_dark.png"]["dataset"] == "unknown"
    assert {e["package_version"] for e in entries if e["name"] in SDIST_SAMPLES} == {samples.SDIST_VERSION}
    retina = by_name[samples.SKIMAGE_RETINA_NAME]
    assert (retina["package"], retina["license"], retina["format"]) == ("scikit-image", "CC0-1.0", "PNG")


def test_second_fetch_is_a_no_op(
    fetched: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    before = _snapshot(fetched)

    def no_download(workdir: Path) -> Path:
        raise AssertionError("a complete, verified folder must not be downloaded again")

    monkeypatch.setattr(samples, "_download_sdist", no_download)
    with caplog.at_level(logging.INFO, logger=samples.__name__):
        assert samples.fetch_samples(fetched, progress=False) == fetched
    assert "already present" in caplog.text
    assert _snapshot(fetched) == before


def test_a_changed_file_makes_the_folder_incomplete(fetched: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(fetched, tmp_path / "copy"))
    assert samples._is_complete(copy)
    with (copy / "DRIVE_22.png").open("ab") as stream:
        stream.write(b"\0")
    assert not samples._is_complete(copy)


def test_wrong_pinned_sha256_raises_and_extracts_nothing(
    fetched: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Depends on `fetched` so that it skips with it when there is no network.
    monkeypatch.setattr(samples, "SDIST_SHA256", "0" * 64)
    dest = tmp_path / "dest"
    with pytest.raises(samples.ChecksumMismatchError):
        samples.fetch_samples(dest, progress=False)
    assert not dest.exists() and list(tmp_path.iterdir()) == []  # no staging folder left behind either


def test_verify_sha256_rejects_other_content(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"not the pinned sdist")
    with pytest.raises(samples.ChecksumMismatchError, match="nothing was extracted"):
        samples._verify_sha256(archive, samples.SDIST_SHA256)


def _add_file(tar: tarfile.TarFile, name: str, payload: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _tarball(path: Path, *, evil: tarfile.TarInfo | None = None, evil_payload: bytes = b"") -> Path:
    """A miniature sdist: one sample, one file outside samples/, and optionally an unsafe member."""
    with tarfile.open(path, "w:gz") as tar:
        _add_file(tar, f"{SAMPLES_FOLDER}/good.png", b"png")
        _add_file(tar, f"retinalysis_fundusprep-{samples.SDIST_VERSION}/README.md", b"readme")
        if evil is not None:
            tar.addfile(evil, io.BytesIO(evil_payload) if evil.isfile() else None)
    return path


def test_extraction_takes_only_samples_original_and_flattens(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    extracted = samples._extract_samples(_tarball(tmp_path / "ok.tar.gz"), dest, progress=False)
    assert extracted == [dest / "good.png"]
    assert [p.name for p in dest.iterdir()] == ["good.png"]
    assert (dest / "good.png").read_bytes() == b"png"


def _file_member(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 4
    return info


def _symlink_member(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "member",
    [
        _file_member("../evil"),
        _file_member(f"{SAMPLES_FOLDER}/../../../evil"),
        _file_member("/tmp/pyfundus-evil"),
        _symlink_member(f"{SAMPLES_FOLDER}/link.png", "/etc/passwd"),
        _symlink_member(f"{SAMPLES_FOLDER}/rel.png", "good.png"),
    ],
    ids=["dotdot", "dotdot-inside-samples", "absolute", "symlink-out", "symlink-in"],
)
def test_extraction_rejects_unsafe_archives(tmp_path: Path, member: tarfile.TarInfo) -> None:
    archive = _tarball(tmp_path / "evil.tar.gz", evil=member, evil_payload=b"evil")
    dest = tmp_path / "a" / "dest"
    with pytest.raises(samples.UnsafeArchiveError):
        samples._extract_samples(archive, dest, progress=False)
    assert not dest.exists()
    assert not (tmp_path / "a" / "evil").exists() and not (tmp_path / "evil").exists()


def test_the_pinned_wheel_holds_the_pinned_retina_photo(tmp_path: Path) -> None:
    """Without scikit-image installed the retina photo comes from one pinned wheel, through pip."""
    try:
        jpeg, version = samples._retina_jpeg_from_wheel(tmp_path)
    except samples.DownloadError as exc:
        _skip_or_fail_offline(exc)
    assert hashlib.sha256(jpeg).hexdigest() == samples.RETINA_JPEG_SHA256 and version == samples.RETINA_WHEEL_VERSION


def test_the_retina_photo_is_the_pinned_file_whichever_way_it_came(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("skimage")  # the test extra installs it: its copy is the pinned file, so no download
    jpeg, _ = samples._installed_skimage_retina()
    wheel = tmp_path / samples.RETINA_WHEEL
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(samples.RETINA_MEMBER, jpeg)
    monkeypatch.setattr(samples, "_pip_download", lambda *args: wheel)
    assert samples._retina_jpeg_from_wheel(tmp_path) == (jpeg, samples.RETINA_WHEEL_VERSION)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(samples.RETINA_MEMBER, jpeg + b"\0")
    with pytest.raises(samples.ChecksumMismatchError, match="not the pinned file"):
        samples._retina_jpeg_from_wheel(tmp_path)


@pytest.fixture
def offline_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """fetch_samples without the network: the miniature sdist and a small JPEG for the retina photo."""
    archive = _tarball(tmp_path / "sdist.tar.gz")
    jpeg = io.BytesIO()
    Image.new("RGB", (32, 32), (150, 60, 30)).save(jpeg, format="JPEG")
    monkeypatch.setattr(samples, "_download_sdist", lambda workdir: archive)
    monkeypatch.setattr(samples, "_verify_sha256", lambda path, expected: None)
    monkeypatch.setattr(samples, "_retina_jpeg", lambda workdir, progress: (jpeg.getvalue(), "test"))
    parent = tmp_path / "cache"
    parent.mkdir()
    return parent


def test_a_half_fetched_folder_is_replaced_whole(offline_fetch: Path) -> None:
    dest = offline_fetch / "samples"
    dest.mkdir()
    (dest / "good.png").write_bytes(b"half")  # what an interrupted fetch of an earlier version left
    assert samples.fetch_samples(dest, progress=False) == dest
    assert sorted(p.name for p in dest.iterdir()) == ["good.png", samples.MANIFEST_NAME, samples.SKIMAGE_RETINA_NAME]
    assert (dest / "good.png").read_bytes() == b"png" and samples._is_complete(dest)
    assert [p.name for p in offline_fetch.iterdir()] == ["samples"]  # no staging folder left beside it


def test_a_failed_fetch_leaves_the_folder_as_it_was(offline_fetch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = samples.fetch_samples(offline_fetch / "samples", progress=False)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}

    def no_retina(workdir: Path, progress: bool) -> NoReturn:
        raise samples.DownloadError("pip could not download scikit-image==0.25.2")

    monkeypatch.setattr(samples, "_retina_jpeg", no_retina)
    with pytest.raises(samples.DownloadError):
        samples.fetch_samples(dest, force=True, progress=False)  # fails after the sdist was extracted
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert [p.name for p in offline_fetch.iterdir()] == ["samples"]
    with pytest.raises(samples.DownloadError):
        samples.fetch_samples(offline_fetch / "new", progress=False)
    assert [p.name for p in offline_fetch.iterdir()] == ["samples"]  # a new folder is not even created


def test_fetch_samples_command_exits_1_and_says_why_when_the_fetch_failed(
    offline_fetch: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyfundus.cli import main

    dest = offline_fetch / "samples"
    assert main(["data", "fetch-samples", "--dest", str(dest)]) == 0  # the exit status README's table gives
    assert "samples" in capsys.readouterr().out

    def no_retina(workdir: Path, progress: bool) -> NoReturn:
        raise samples.DownloadError("pip could not download scikit-image==0.25.2")

    monkeypatch.setattr(samples, "_retina_jpeg", no_retina)
    assert main(["data", "fetch-samples", "--dest", str(offline_fetch / "new")]) == 1
    err = capsys.readouterr().err
    assert "could not fetch the samples" in err and "scikit-image==0.25.2" in err
    assert sorted(p.name for p in offline_fetch.iterdir()) == ["samples"]  # and nothing was left behind


def test_a_folder_holding_other_files_is_refused_untouched(offline_fetch: Path) -> None:
    dest = offline_fetch / "photos"
    dest.mkdir()
    (dest / "clinic-notes.docx").write_bytes(b"not ours")
    with pytest.raises(samples.SampleFetchError, match="clinic-notes.docx.*nothing was changed"):
        samples.fetch_samples(dest, progress=False)
    assert [p.name for p in dest.iterdir()] == ["clinic-notes.docx"]
    assert sorted(p.name for p in offline_fetch.iterdir()) == ["photos"]


def test_missing_samples_tell_the_user_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pyfundus data fetch-samples"):
        samples.sample_paths(tmp_path)
    (tmp_path / samples.MANIFEST_NAME).write_text(json.dumps([{"name": "gone.png"}]))
    with pytest.raises(FileNotFoundError, match="gone.png.*pyfundus data fetch-samples"):
        samples.sample_paths(tmp_path)


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PYFUNDUS_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert paths.cache_dir() == tmp_path / "home" / ".cache" / "pyfundus"

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "pyfundus"

    monkeypatch.setenv("PYFUNDUS_HOME", str(tmp_path / "explicit"))
    assert paths.cache_dir() == tmp_path / "explicit"
    assert paths.cache_dir().is_dir()
    assert samples.samples_dir() == tmp_path / "explicit" / "samples"
