"""The Ray engine on a local 2-CPU Ray (one for the module: Ray takes seconds to start) with 2 workers: the same files
as the serial engine, an interrupted batch that resumes without redoing finished users, and a worker's failure as
one line."""

import json
import re
import time

import pytest
import ray  # requirements-dev.txt installs it: the engine is tested wherever the suite runs

from explain.__main__ import main
from explain.batch import INDEX, MANIFEST, PLOTLYJS, read_manifest
from explain.batch_ray import export_batch_ray, start_local_ray

STEPS = 4
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")  # provenance "created", in the JSON and on the page
BUILT_IN = re.compile(r"(<th>Built in</th><td><code>)[0-9.]+ s")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs, started as the command line starts one; each batch adds and removes its workers."""
    start_local_ray(2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def users(recommender):
    return [str(u) for u in recommender.user_ids[:4]]


def batch(tiny_model, users, out, fmt, *extra):
    return main(["report", "--model", str(tiny_model), "--users", ",".join(users), "--k", "2", "--n-steps",
                 str(STEPS), "--out", str(out), "--format", fmt, "--no-progress", *extra])


TIMES = ("created", "seconds", "timing")  # when a report was made, and how long it and each explanation took


def without_time(path):
    """A report's content with the moment it was made and how long each step took removed."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return untimed(json.loads(text))
    text, dated = TIME.subn("TIME", text)
    text, timed = BUILT_IN.subn(r"\1SECONDS", text)
    assert dated >= 2 and timed == 1  # the heading's and the provenance's time, and the build time
    return text


def untimed(value):
    if isinstance(value, dict):
        return {key: untimed(v) for key, v in value.items() if key not in TIMES}
    return [untimed(v) for v in value] if isinstance(value, list) else value


def same_files(serial, on_ray, fmt, users):
    """The two directories hold the same files: reports equal but for their times, the rest byte for byte, and
    manifests that record the same users, files and summaries."""
    names = sorted(p.name for p in serial.iterdir())
    assert names == sorted(p.name for p in on_ray.iterdir())
    reports = [name for name in names if name.endswith(f".{fmt}") and name != INDEX]
    assert len(reports) == len(users) and (PLOTLYJS in names) == (fmt == "html")
    for name in names:
        if name in reports:
            assert without_time(on_ray / name) == without_time(serial / name), name
        elif name != MANIFEST:  # the index and plotly.js
            assert (on_ray / name).read_bytes() == (serial / name).read_bytes(), name
    serial_header, serial_entries = read_manifest(serial / MANIFEST)
    ray_header, ray_entries = read_manifest(on_ray / MANIFEST)
    assert ray_header == serial_header and sorted(ray_entries) == sorted(serial_entries) == sorted(users)
    for user, entry in ray_entries.items():  # the hash and size differ with the times inside
        assert {k: v for k, v in entry.items() if k not in ("sha256", "bytes")} == \
            {k: v for k, v in serial_entries[user].items() if k not in ("sha256", "bytes")}


def cpus_come_back():
    """Every worker of the batches before is gone: the local Ray's 2 CPUs are free again (a kill is asynchronous)."""
    for _ in range(100):
        if ray.available_resources().get("CPU") == 2:
            return True
        time.sleep(0.1)
    return False


def test_an_interrupted_ray_batch_resumes_and_writes_the_serial_engines_files(local_ray, tiny_model, users, tmp_path,
                                                                             capsys):
    serial, on_ray = tmp_path / "serial", tmp_path / "ray"
    assert batch(tiny_model, users, serial, "json") == 0

    def interrupt_after_two(done, total, user):
        if done == 2:
            raise KeyboardInterrupt  # as Ctrl-C would, with the other two users still being explained

    with pytest.raises(KeyboardInterrupt):
        export_batch_ray(tiny_model, users, on_ray, fmt="json", k=2, n_steps=STEPS, workers=2,
                         progress=interrupt_after_two)
    assert cpus_come_back()
    _, entries = read_manifest(on_ray / MANIFEST)
    stamps = {p.name: p.stat().st_mtime_ns for p in on_ray.glob("*.json")}
    assert len(entries) == len(stamps) == 2 and all(user in (on_ray / INDEX).read_text() for user in entries)
    capsys.readouterr()

    assert batch(tiny_model, users, on_ray, "json", "--engine", "ray", "--workers", "2") == 0
    said = capsys.readouterr().out
    assert "wrote 2 reports" in said and "2 finished earlier were kept" in said
    assert {p.name: p.stat().st_mtime_ns for p in on_ray.glob("*.json") if p.name in stamps} == stamps
    same_files(serial, on_ray, "json", users)


def test_ray_html_reports_share_the_serial_engines_plotlyjs_and_index(local_ray, tiny_model, users, tmp_path):
    serial, on_ray = tmp_path / "serial", tmp_path / "ray"
    assert batch(tiny_model, users[:2], serial, "html") == 0
    assert batch(tiny_model, users[:2], on_ray, "html", "--engine", "ray", "--workers", "2") == 0
    same_files(serial, on_ray, "html", users[:2])


def test_a_worker_that_cannot_load_the_model_is_one_line(local_ray, tmp_path, users, capsys):
    missing = tmp_path / "no-model"
    assert main(["report", "--model", str(missing), "--users", users[0], "--out", str(tmp_path / "out"),
                 "--engine", "ray", "--workers", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(missing) in err
    assert not (tmp_path / "out").exists()
    assert cpus_come_back()
