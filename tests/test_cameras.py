"""Several cameras in one daemon: routing each capture to its camera's model, and the unfamiliar-camera notice."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from daemon_helpers import pixels
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pyfundus.daemon.cameras import FIRST_CAPTURES, MIN_JUDGED, CameraWatch
from pyfundus.daemon.cli import startup_lines
from pyfundus.daemon.config import ConfigError, WatchConfig, load_config, model_rule
from pyfundus.daemon.records import Verdict
from pyfundus.daemon.routing import ModelRouter, Route
from pyfundus.grading import Thresholds
from pyfundus.io import peek_camera, read_image


def exif_png(path, make: str, model: str, seed: int = 1):
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = make, model
    Image.fromarray(pixels(seed, 32)).save(path, format="PNG", exif=exif)
    return str(path)


def dicom_file(path, **tags):
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.full((16, 16, 3), 120, np.uint8).tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def test_camera_keys_from_dicom_and_exif(tmp_path):
    topcon = dicom_file(tmp_path / "a.dcm", Manufacturer="TOPCON", ManufacturerModelName="TRC-NW400",
                        DeviceSerialNumber="  A 123 ")  # fmt: skip
    assert read_image(topcon, min_size=8).camera == peek_camera(topcon) == "TOPCON TRC-NW400 #A 123"
    bare = dicom_file(tmp_path / "b.dcm")
    assert read_image(bare, min_size=8).camera == peek_camera(bare) == "unknown"
    canon = exif_png(tmp_path / "c.png", "Canon", "Canon  CR-2 AF")
    assert read_image(canon, min_size=8).camera == peek_camera(canon) == "Canon CR-2 AF"
    plain = tmp_path / "d.png"
    Image.fromarray(pixels(2, 32)).save(plain)
    assert peek_camera(plain) == "unknown" and peek_camera(tmp_path / "missing.png") == "unknown"


class Named:
    """A stub model that says who scored."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[list[str]] = []

    def score(self, inputs, *, batch_size=8):
        self.calls.append([os.path.basename(p) for p in inputs])
        return [SimpleNamespace(path=p, model=self.name) for p in inputs]


def test_each_capture_is_scored_by_its_cameras_or_folders_model(tmp_path):
    (tmp_path / "room2" / "left").mkdir(parents=True)
    default, topcon, room2, left = Named("default"), Named("topcon"), Named("room2"), Named("left")
    router = ModelRouter(default, [Route("camera", "TOPCON TRC-NW400", topcon), Route("folder", "room2", room2),
                                   Route("folder", "room2/left", left)], root=str(tmp_path))  # fmt: skip
    paths = [
        dicom_file(tmp_path / "t.dcm", Manufacturer="TOPCON", ManufacturerModelName="TRC-NW400"),
        exif_png(tmp_path / "other.png", "Canon", "CR-2"),
        exif_png(tmp_path / "room2" / "r.png", "TOPCON", "TRC-NW400"),  # the folder rule wins over the camera's
        exif_png(tmp_path / "room2" / "left" / "l.png", "Canon", "CR-2"),  # the longest folder wins
    ]
    results = router.score(paths, batch_size=4)
    assert [r.model for r in results] == ["topcon", "default", "room2", "left"]  # in input order
    assert [r.path for r in results] == paths
    assert topcon.calls == [["t.dcm"]] and default.calls == [["other.png"]]  # one call per model
    assert router.mapped_cameras == {"TOPCON TRC-NW400"}
    names = [model.name for model in router.models]
    assert names[0] == "default" and sorted(names) == ["default", "left", "room2", "topcon"]  # each once
    assert router.name == "default"


def test_start_up_lines_name_each_model_with_its_thresholds(tmp_path):
    default, topcon = Named("fthnet_s"), Named("fthnet_s")
    default.thresholds, topcon.thresholds = Thresholds(43, 62, calibrated=True), Thresholds(13, 20.5, calibrated=True)
    topcon.file = tmp_path / "topcon.safetensors"
    router = ModelRouter(default, [Route("camera", "TOPCON TRC-NW400", topcon)], root=str(tmp_path))
    daemon = SimpleNamespace(
        config=WatchConfig(folder=tmp_path, state_dir=tmp_path / "state", poll=2.0, recursive=True),
        watcher=SimpleNamespace(mode="polling"), scoring=SimpleNamespace(scorer=router, backend="torch fp32 on cpu"),
        web=SimpleNamespace(url="http://127.0.0.1:8470/"),
    )  # fmt: skip
    assert startup_lines(daemon) == [
        f"watching {tmp_path} (polling every 2 s, with sub-folders)",
        "model: fthnet_s; Reject below 43, Good from 62 (calibrated)",
        f"camera 'TOPCON TRC-NW400': {topcon.file}; Reject below 13, Good from 20.5 (calibrated)",
        "backend: torch fp32 on cpu",
        f"ledger and log: {tmp_path / 'state'}",
        "operator page: http://127.0.0.1:8470/",
    ]
    daemon.config.redact_identifiers = True
    assert startup_lines(daemon)[0] == "watching the folder (polling every 2 s, with sub-folders)"


def test_camera_and_folder_models_come_from_flags_or_the_config_file(tmp_path):
    folder = tmp_path / "camera"
    folder.mkdir()
    assert model_rule("Acme #A=1=/m/site.safetensors")[0] == "Acme #A=1"  # the last "=" ends the key
    with pytest.raises(Exception, match="KEY=FILE"):
        model_rule("no-file-given")
    key, path = model_rule("TOPCON TRC-NW400=/m/site.safetensors")
    assert key == "TOPCON TRC-NW400" and str(path) == "/m/site.safetensors"
    config = load_config({"folder": folder, "camera_models": [model_rule("Canon CR-2=c.safetensors")],
                          "folder_models": [model_rule("room2/=r.safetensors")]})  # fmt: skip
    assert {k: str(v) for k, v in config.camera_models.items()} == {"Canon CR-2": "c.safetensors"}
    assert list(config.folder_models) == ["room2"]
    toml = tmp_path / "watch.toml"
    toml.write_text(f'folder = "{folder}"\n[camera_models]\n"TOPCON TRC-NW400" = "models/topcon.safetensors"\n')
    loaded = load_config({}, toml)
    assert loaded.camera_models == {"TOPCON TRC-NW400": tmp_path / "models" / "topcon.safetensors"}  # beside the file
    toml.write_text(f'folder = "{folder}"\ncamera_models = "topcon.safetensors"\n')
    with pytest.raises(ConfigError, match="table of model files"):
        load_config({}, toml)
    assert isinstance(WatchConfig(folder=folder).camera_models, dict)


def verdict(camera: str, quality_class: str, n: int, **extra) -> Verdict:
    return Verdict(path=f"/c/{n}.png", sha256=f"{n:064x}", state="scored", score=50.0, quality_class=quality_class,
                   camera=camera, **extra)  # fmt: skip


def test_a_camera_whose_first_captures_fall_below_good_is_said_aloud_once(caplog):
    notices = []
    watch = CameraWatch(state_dir="/var/lib/pyfundus", taught={"Site Cam"}, on_notice=notices.append)
    for n in range(MIN_JUDGED - 1):
        watch(verdict("Acme FC9", "Reject", n))
    assert not notices  # too few to judge
    watch(verdict("Acme FC9", "Usable", 10))
    assert [n.camera for n in notices] == ["Acme FC9"] and notices[0].below_good == MIN_JUDGED
    assert "pyfundus adapt --from-ledger /var/lib/pyfundus --camera 'Acme FC9'" in notices[0].message
    assert "--camera-model 'Acme FC9=site-acme-fc9.safetensors'" in notices[0].message  # the flag watch takes
    assert any("looks unfamiliar" in r.getMessage() for r in caplog.records)
    for n in range(20, 30):
        watch(verdict("Acme FC9", "Reject", n))
    assert len(notices) == 1  # said once
    # A camera with a site model of its own is not watched; duplicates and failures do not count.
    for n in range(40, 50):
        watch(verdict("Site Cam", "Reject", n))
        watch(verdict("Other", "Reject", n, duplicate_of="/c/x.png"))
        watch(Verdict(path=f"/c/f{n}.png", sha256=f"{n:064x}", state="failed", camera="Other", error="truncated"))
    assert len(notices) == 1


def test_a_camera_that_mostly_grades_good_is_not_called_unfamiliar():
    notices = []
    watch = CameraWatch(state_dir="/s", taught=(), on_notice=notices.append)
    grades = ["Good", "Reject", "Good", "Usable", "Good", "Good", "Reject", "Good", "Reject", "Reject", "Reject"]
    for n, grade in enumerate(grades):  # only the first FIRST_CAPTURES count: a bad afternoon later is not the camera
        watch(verdict("Canon CR-2", grade, n))
    assert not notices and FIRST_CAPTURES == 8


def test_notices_are_remembered_from_the_ledger_at_start_up():
    notices = []
    watch = CameraWatch(state_dir="/s", taught=(), on_notice=notices.append)
    watch.seed(verdict("Acme FC9", "Reject", n) for n in range(6))
    assert not notices and list(watch.notices) == ["Acme FC9"]  # known: the daemon says it again itself at start
    watch(verdict("Acme FC9", "Reject", 99))
    assert not notices  # not a second time
