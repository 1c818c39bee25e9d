"""pyfundus watch --enhance-usable: an enhanced copy of each Usable capture, outside the watched folder, on the page."""

from __future__ import annotations

import hashlib
import os

import cv2
import pytest

from pyfundus.daemon.config import WatchConfig
from pyfundus.daemon.enhanced import EnhanceUsable
from pyfundus.daemon.errors import ConfigError
from pyfundus.daemon.logs import Redactor
from pyfundus.daemon.records import Verdict
from pyfundus.daemon.web import OperatorWeb
from pyfundus.data.synth import generate_fundus
from pyfundus.io import encode_jpeg


def _verdict(path, level: str, **extra) -> Verdict:
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return Verdict(path=str(path), sha256=sha, state="scored", score=55.0, quality_class=level, **extra)


def test_usable_captures_get_an_enhanced_copy_outside_the_folder(tmp_path):
    folder, copies = tmp_path / "camera", tmp_path / "enhanced"
    (folder / "room2").mkdir(parents=True)
    usable = folder / "room2" / "a.jpg"
    usable.write_bytes(encode_jpeg(generate_fundus(1, size=512)[0]))
    good = folder / "b.jpg"
    good.write_bytes(usable.read_bytes())
    done = []
    sink = EnhanceUsable(copies, root=str(folder), names=Redactor([str(folder)], enabled=False), on_done=lambda *a: done.append(a))
    sink(_verdict(good, "Good"))
    sink(_verdict(usable, "Usable", duplicate_of=None))
    sink(_verdict(usable, "Usable", duplicate_of=str(good)))  # a second name of the same content: once is enough
    sink.close(120)
    assert os.listdir(copies) == ["room2"] and os.listdir(copies / "room2") == ["a.jpg"]
    assert cv2.imread(str(copies / "room2" / "a.jpg")).shape == (1728, 2304, 3)
    assert done == [(_verdict(usable, "Usable").sha256, str(copies / "room2" / "a.jpg"))]
    assert sorted(os.listdir(folder)) == ["b.jpg", "room2"]  # the camera's folder is untouched


def test_a_capture_changed_since_scoring_is_not_enhanced(tmp_path):
    capture = tmp_path / "a.jpg"
    capture.write_bytes(encode_jpeg(generate_fundus(2, size=512)[0]))
    verdict = _verdict(capture, "Usable")
    capture.write_bytes(encode_jpeg(generate_fundus(3, size=512)[0]))
    sink = EnhanceUsable(tmp_path / "out", root=str(tmp_path), names=Redactor([str(tmp_path)], enabled=False))
    sink(verdict)
    sink.close(60)
    assert not (tmp_path / "out").exists()


def test_the_copy_folder_must_be_outside_the_watched_folder(tmp_path):
    with pytest.raises(ConfigError, match="enhanced-copy folder"):
        WatchConfig(folder=tmp_path, enhance_usable=tmp_path / "copies", state_dir=tmp_path.parent / "s").validate()


def test_the_page_offers_the_copy_of_usable_captures(tmp_path):
    web = OperatorWeb(host="127.0.0.1", port=0, root=str(tmp_path), state_dir=tmp_path, status=dict, enhancing=True)
    capture = tmp_path / "a.jpg"
    capture.write_bytes(encode_jpeg(generate_fundus(4, size=512)[0]))
    usable, good = _verdict(capture, "Usable"), _verdict(capture, "Good")
    assert web.board._record(usable, 0.0)["enhanced"] == f"/enhanced/{usable.sha256}"
    assert web.board._record(good, 0.0)["enhanced"] is None
    assert web.enhanced_thumbnail(usable.sha256) is None  # not written yet
    web.enhanced_copy(usable.sha256, str(capture))
    assert web.enhanced_thumbnail(usable.sha256)[:2] == b"\xff\xd8"  # a JPEG
