"""``pyfundus score --engine ray`` on a real Ray cluster: a head node and a worker node (``ray start``,
one CPU each), the real model, 39 real and synthetic captures (the fetched sample photos, synthetic fundi
written as JPEG and PNG, a truncated JPEG and a file that is not an image), every score held to the local engine's.

The drivers run as processes of their own, as a user's would: the CLI, or a few lines around
``score_archive`` where a test needs a part committed per batch to know how far a run has got.
One cluster serves the whole module. The output folder's own rules (parts written whole, resume's index)
are tested without Ray at the end.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from ray_helpers import LocalCluster, ray_or_skip
from sample_helpers import sample_photos

from pyfundus.cli import main
from pyfundus.data.synth import generate_fundus
from pyfundus.errors import EXIT_SOME_FAILED
from pyfundus.paths import sha256_file
from pyfundus.verdicts import RECORD_FIELDS

pytestmark = pytest.mark.slow

SYNTHETIC = 24
RUN_TIMEOUT = 300  # a run on the loaded two-core machine takes 30-60 s; this only stops a hung one
# The driver a test can watch: a part is committed for every batch of results that reaches it.
DRIVER = """
import sys
from pyfundus.inputs import collect_inputs
from pyfundus.distributed.archive import score_archive
score_archive(collect_inputs([sys.argv[1]]).entries, sys.argv[2], address=sys.argv[3], actors=2, checkpoint_rows=1)
"""


@pytest.fixture(scope="module")
def cluster():
    """Launched first; its nodes come up while the local engine scores the reference (``local``)."""
    ray_or_skip()
    cluster = LocalCluster()
    try:
        yield cluster.start(workers=1)
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def captures(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("archive")
    for photo in sample_photos():
        shutil.copy(photo, folder / photo.name)
    for seed in range(SYNTHETIC):
        rgb, _ = generate_fundus(seed, size=512)
        Image.fromarray(rgb).save(folder / f"synthetic_{seed:02d}.{'jpg' if seed % 2 else 'png'}")
    whole = (folder / "synthetic_01.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (folder / "export.dat").write_text("not an image\n")  # named as no capture is, so read, not skipped
    return folder


@pytest.fixture(scope="module")
def local(captures) -> dict[str, dict]:
    """What the local engine says of every capture: ``pyfundus score --json``, run here."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["score", str(captures), "--json", "--no-progress"]) == EXIT_SOME_FAILED  # the two bad files
    return {record["path"]: record for record in json.loads(out.getvalue())}


def run_cli(cluster, *args, timeout=RUN_TIMEOUT):
    cluster.ready()
    command = [sys.executable, "-m", "pyfundus.cli", "score", *args, "--engine", "ray",
               "--ray-address", cluster.address, "--json", "--no-progress"]  # fmt: skip
    return subprocess.run(command, env=cluster.env, capture_output=True, text=True, timeout=timeout)


def assert_matches_local(records, local):
    """One row per capture, and each row the local engine's verdict (scores within 0.01)."""
    paths = [r["path"] for r in records]
    assert len(paths) == len(set(paths)), "a capture has more than one row"
    assert set(paths) == set(local)
    for record in records:
        expected = local[record["path"]]
        assert record["state"] == expected["state"], record["path"]
        assert record["sha256"] == expected["sha256"], record["path"]
        if expected["state"] == "scored":
            assert abs(record["score"] - expected["score"]) <= 0.01, record["path"]
            assert record["class"] == expected["class"], record["path"]
            assert record["scored_by"].startswith("ray:")
        else:
            assert record["score"] is None and record["error"] == expected["error"]


def start_driver(cluster, folder, output, log: Path):
    cluster.ready()
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", DRIVER, str(folder), str(output), cluster.address],
                                env=cluster.env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def read_records(output: Path) -> list[dict]:
    from pyfundus.distributed.parquet import read_records  # pyarrow: with Ray, an optional extra

    return read_records(output)


def rows_so_far(output: Path) -> list[dict]:
    return read_records(output) if output.exists() else []


def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def test_an_archive_scored_on_the_cluster_matches_the_local_engine(cluster, captures, local, tmp_path):
    output = tmp_path / "results.parquet"
    done = run_cli(cluster, str(captures), "--output", str(output), "--actors", "2")
    assert done.returncode == 1, done.stderr  # the truncated JPEG and the non-image: some failed
    summary = json.loads(done.stdout)
    assert summary["captures"] == len(local) == SYNTHETIC + len(sample_photos()) + 2
    assert (summary["scored"], summary["failed"]) == (len(local) - 2, 2)
    assert summary["actors"] == 2 and summary["images_per_second"] > 0
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(output)  # the folder of parts reads as one table
    assert table.column_names == list(RECORD_FIELDS)
    assert table.schema.field("probabilities").type == pa.struct([(c, pa.float64()) for c in ("Good", "Usable", "Reject")])
    assert table.schema.field("causes").type == pa.map_(pa.string(), pa.float64())
    assert_matches_local(read_records(output), local)
    failed = {Path(r["path"]).name: r["error"] for r in read_records(output) if r["state"] == "failed"}
    assert "truncated" in failed["truncated.jpg"] and "not an image" in failed["export.dat"]


def test_resume_continues_a_half_written_output(cluster, captures, local, tmp_path):
    folder = tmp_path / "archive"
    shutil.copytree(captures, folder)
    local = {path.replace(str(captures), str(folder)): json.loads(json.dumps(record).replace(str(captures), str(folder)))
             for path, record in local.items()}  # the same records, of the copies  # fmt: skip
    output = tmp_path / "results.parquet"
    driver = start_driver(cluster, folder, output, tmp_path / "driver.log")
    try:  # killed as a crash would, once some batches are committed and before all are
        wait_until(lambda: len(rows_so_far(output)) >= 8 or driver.poll() is not None, RUN_TIMEOUT, "8 rows")
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait()
    before = {r["path"]: r for r in rows_so_far(output)}
    assert 8 <= len(before) < len(local), "the driver was not stopped half-way"
    (output / "part-99999.parquet.tmp").write_bytes(b"PAR1 a part the crash cut short")
    changed = sorted(before)[0]  # a capture replaced after its row was written must be scored again
    Image.fromarray(generate_fundus(99, size=512)[0]).save(changed, format="PNG" if changed.endswith("png") else "JPEG")

    done = run_cli(cluster, str(folder), "--output", str(output), "--resume")

    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["skipped"], summary["rescored"]) == (len(before) - 1, 1)
    assert summary["captures"] == len(local) and sum(summary["scored_by"].values()) == len(local) - len(before) + 1
    assert not list(output.glob("*.tmp"))
    records = read_records(output)
    after = {r["path"]: r for r in records}
    for path, row in before.items():  # kept as they were, not scored again
        assert after[path] == row or path == changed
    assert after[changed]["sha256"] == sha256_file(changed) != before[changed]["sha256"]
    assert_matches_local([r for r in records if r["path"] != changed], {p: r for p, r in local.items() if p != changed})


def test_a_worker_node_killed_mid_run_costs_no_capture(cluster, captures, local, tmp_path):
    output = tmp_path / "results.parquet"
    driver = start_driver(cluster, captures, output, tmp_path / "driver.log")
    worker = cluster.nodes[1]
    try:
        # Two actors, one CPU per node: one actor on each. The worker node dies once the first results are in.
        wait_until(lambda: rows_so_far(output) or driver.poll() is not None, RUN_TIMEOUT, "the first rows")
        at_kill = rows_so_far(output)
        cluster.kill(worker)
        assert driver.wait(timeout=RUN_TIMEOUT) == 0, (tmp_path / "driver.log").read_text(errors="replace")
    finally:
        if driver.poll() is None:
            driver.kill()
        cluster.add_worker()  # the next test finds the cluster as it was (once ready)
    assert len(at_kill) < len(local), "the run ended before the node was killed"
    records = read_records(output)
    assert_matches_local(records, local)
    before = {r["path"] for r in at_kill}
    # After the kill one node scores the rest. Batches the dead node finished before it died can still be written
    # after the snapshot (Ray Data buffers finished blocks: 10 rows were seen on a loaded 2-core machine), so
    # what is held is that one node took over (more than a batch) and, above, that nothing was lost or doubled.
    after = collections.Counter(r["scored_by"] for r in records if r["path"] not in before)
    assert len(after) <= 2 and after.most_common(1)[0][1] > 8, f"rows after the kill came from {dict(after)}"


def test_an_existing_output_is_never_overwritten(tmp_path, capsys):
    ray_or_skip()
    output = tmp_path / "results.parquet"
    output.mkdir()
    (output / "part-00000.parquet").write_bytes(b"results of an earlier run")
    assert main(["score", str(tmp_path), "--engine", "ray", "--output", str(output)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (output / "part-00000.parquet").read_bytes() == b"results of an earlier run"


def test_the_local_engine_refuses_ray_options(tmp_path, capsys):
    assert main(["score", str(tmp_path), "--output", str(tmp_path / "out.parquet"), "--resume"]) == 2
    assert "--output, --resume need --engine ray" in capsys.readouterr().err


def test_without_ray_the_ray_engine_says_how_to_install_it(tmp_path):
    """Ray is an optional extra: its absence is a usage error with the install command, not a traceback."""
    hide_ray = "import sys; sys.modules['ray'] = None; from pyfundus.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", hide_ray, "score", str(tmp_path), "--engine", "ray", "--output",
                           str(tmp_path / "out.parquet")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert 'pip install "pyfundus[ray]"' in done.stderr and "Traceback" not in done.stderr


# ---- the output folder, without Ray ----------------------------------------------------


def test_parts_are_whole_and_resume_knows_each_files_stat(tmp_path):
    ray_or_skip()
    from pyfundus.distributed.parquet import ResultsFolder, records_table
    from pyfundus.verdicts import ScoreResult

    records = [ScoreResult(path=f"/archive/{n}.jpg", sha256=f"{n:064x}", score=50.0 + n).to_dict() for n in range(4)]
    output = tmp_path / "results.parquet"
    results = ResultsFolder(output, resume=False)
    results.add(records_table(records[:2], [(100, 1), (200, 2)]))
    results.add(records_table(records[2:], [(300, 3), None]))
    (output / "part-00002.parquet.tmp").write_bytes(b"cut short")

    resumed = ResultsFolder(output, resume=True)
    assert not list(output.glob("*.tmp"))
    assert resumed.index() == {"/archive/0.jpg": ((100, 1), "scored"), "/archive/1.jpg": ((200, 2), "scored"),
                               "/archive/2.jpg": ((300, 3), "scored"), "/archive/3.jpg": (None, "scored")}  # fmt: skip
    assert resumed.drop({"/archive/1.jpg"}) == 1
    assert [r["path"] for r in read_records(output)] == ["/archive/0.jpg", "/archive/2.jpg", "/archive/3.jpg"]
    assert resumed.index()["/archive/2.jpg"] == ((300, 3), "scored")  # the stats stay with their rows
    assert read_records(output)[0] == records[0]
    with pytest.raises(FileExistsError, match="--resume"):
        ResultsFolder(output, resume=False)
