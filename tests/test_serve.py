"""`unlearnable serve` at the API level: the token and host rules, uploads that must be
refused, one task at a time, a protect run's outputs, previews, the zip, the check,
cancel and resume."""

import io
import socket
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from serve_harness import TINY, TOKEN, photo_png, reference_npz, start_server
from unlearnable.cli import main
from unlearnable.errors import UnlearnableError
from unlearnable.serve import Options, serve
from unlearnable.serve.jobs import Jobs
from unlearnable.serve.uploads import Inbox, Limits, entry_parts

LIMITS = Limits(file_bytes=300_000, job_bytes=3_000_000, files=12)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    options = Options(reference=reference_npz(root / "ref.npz"), device="cpu", protect=TINY,
                      verify={"epochs": 1, "mi": False, "attackers": False}, limits=LIMITS)
    s = start_server(root / "work", options)
    yield s
    s.stop()


def new_job(srv, **body) -> str:
    status, d = srv.call("POST", "/api/jobs", body or {})
    assert status == 201, d
    return d["id"]


def upload(srv, job: str, name: str, data: bytes):
    return srv.call("POST", f"/api/jobs/{job}/files?name={name}", data)


def test_token_and_host_rules(srv):
    assert srv.call("GET", "/", token=None)[0] == 403
    assert srv.call("GET", "/", token="wrong", query_token=True)[0] == 403
    status, page = srv.call("GET", "/", query_token=True)
    assert status == 200 and b"Protect your images" in page
    assert srv.call("GET", "/static/app.js", token=None)[0] == 200  # the page's own code is not private
    assert srv.call("GET", "/api/state", token=None)[0] == 403
    assert srv.call("GET", "/api/state", query_token=True)[0] == 200  # reads: header or query
    status, d = srv.call("POST", "/api/jobs", {}, query_token=True)  # writes: header only (no cross-site forms)
    assert status == 403 and "token" in d["error"]
    assert srv.call("GET", "/api/state", headers={"Host": "attacker.example"})[0] == 400  # DNS rebinding
    assert srv.call("GET", "/api/jobs/../../etc")[0] == 404
    assert srv.call("GET", "/api/jobs/0123456789ab")[0] == 404


def test_uploads_refuse_bad_input_and_keep_nothing_of_it(srv, monkeypatch):
    job = new_job(srv)
    status, d = upload(srv, job, "ok.png", photo_png(0))
    assert status == 200 and d["added"] == ["ok.png"] and d["refused"] == []
    cases = {
        "notes.png": b"this is text, not a picture",
        "cut.png": photo_png(1)[:200],  # truncated
        "empty.png": b"",
        "huge.png": b"\0" * (LIMITS.file_bytes + 1),
        "..": photo_png(0),
        ".hidden.png": photo_png(0),
    }
    reasons = {}
    for name, data in cases.items():
        status, d = upload(srv, job, name, data)
        assert status == 200 and d["added"] == [] and len(d["refused"]) == 1, (name, d)
        reasons[name] = d["refused"][0]["reason"]
    assert "not an image" in reasons["notes.png"] and "not an image" in reasons["cut.png"]
    assert "empty" in reasons["empty.png"] and "larger than the limit" in reasons["huge.png"]
    assert "not a file name" in reasons[".."] and "hidden" in reasons[".hidden.png"]
    status, d = upload(srv, job, "a%2Fb.png", photo_png(0))  # a separator in an uploaded name
    assert d["added"] == [] and "separator" in d["refused"][0]["reason"]
    # A decompression bomb: more pixels than Pillow's limit (lowered here so the test stays small).
    bomb = photo_png(2)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    status, d = upload(srv, job, "bomb.png", bomb)
    assert d["added"] == [] and "too large" in d["refused"][0]["reason"]
    monkeypatch.undo()

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("people/anna/1.png", photo_png(3))
        z.writestr("../escape.png", photo_png(3))
        z.writestr("/etc/abs.png", photo_png(3))
        z.writestr("C:/win.png", photo_png(3))
        z.writestr("people/..\\up.png", photo_png(3))
        z.writestr("__MACOSX/._1.png", b"resource fork")
        z.writestr("zeros.png", b"\0" * (20 * LIMITS.file_bytes))  # a zip bomb entry: tiny compressed
        link = zipfile.ZipInfo("link.png")
        link.external_attr = (0o120777 << 16)
        z.writestr(link, "/etc/passwd")
    status, d = upload(srv, job, "photos.zip", buf.getvalue())
    assert status == 200 and d["added"] == ["people/anna/1.png"]
    refused = {r["name"].split(": ", 1)[1]: r["reason"] for r in d["refused"]}
    assert set(refused) == {"../escape.png", "/etc/abs.png", "C:/win.png", "people/..\\up.png", "zeros.png",
                            "link.png"}
    assert "outside" in refused["../escape.png"] and "absolute" in refused["/etc/abs.png"]
    assert "larger than the limit" in refused["zeros.png"] and "symbolic link" in refused["link.png"]
    assert d["ignored"] == ["photos.zip: __MACOSX/._1.png"]
    status, d = upload(srv, job, "broken.zip", b"PK\x03\x04 not really")
    assert "not a readable zip" in d["refused"][0]["reason"]

    inbox = srv.work / "jobs" / job / "input"
    kept = sorted(p.relative_to(inbox).as_posix() for p in inbox.rglob("*") if p.is_file())
    assert kept == ["ok.png", "people/anna/1.png"]  # no temporary or refused file is left
    assert not [p for p in srv.work.rglob("*.png") if "input" not in p.parts and "output" not in p.parts]
    assert not list(srv.work.parent.glob("escape.png")) and not list(srv.work.rglob("escape.png"))


def test_inbox_limits_count_and_total(tmp_path):
    inbox = Inbox(tmp_path / "in", Limits(file_bytes=10**6, job_bytes=10**6, files=2))
    assert inbox.receive("a.png", [photo_png(0)]).added == ["a.png"]
    assert inbox.receive("a.png", [photo_png(1)]).added == ["a.png"]  # the same name again replaces it
    assert inbox.receive("b.png", [photo_png(2)]).added == ["b.png"]
    r = inbox.receive("c.png", [photo_png(3)])
    assert r.added == [] and "maximum of 2 images" in r.refused[0]["reason"]
    small = Inbox(tmp_path / "in2", Limits(file_bytes=10**6, job_bytes=len(photo_png(0)) + 10, files=9))
    assert small.receive("a.png", [photo_png(0)]).added == ["a.png"]
    assert "exceed" in small.receive("b.png", [photo_png(1)]).refused[0]["reason"]
    with pytest.raises(ConnectionError), small.upload("c.png") as up:  # a lost connection keeps nothing
        up.write(photo_png(2)[:50])
        raise ConnectionError
    assert sorted(p.name for p in (tmp_path / "in2").iterdir()) == ["a.png"]
    assert entry_parts("dir/") is None and entry_parts(".DS_Store") is None
    assert entry_parts("./a/b.png") == ["a", "b.png"]


def test_a_zip_entry_that_replaces_a_file_counts_once(tmp_path):
    """Re-sending a zip near the job's limit: each entry replaces its earlier copy, so only
    the difference counts against the total (a flat BMP deflates to almost nothing, so the
    zip itself fits beside the first copy while two copies of the image would not)."""
    bmp = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(bmp, format="BMP")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("photos/a.bmp", bmp.getvalue())
    size, packed = len(bmp.getvalue()), len(buf.getvalue())
    assert size > packed + 1000
    inbox = Inbox(tmp_path / "in", Limits(file_bytes=10**6, job_bytes=size + packed + 1000, files=9))
    for _ in range(2):
        r = inbox.receive("photos.zip", [buf.getvalue()])
        assert r.added == ["photos/a.bmp"] and not r.refused
    assert inbox.count == 1 and inbox.bytes == size


def test_protect_previews_zip_check_and_one_task_at_a_time(srv):
    job = new_job(srv)
    originals = {f"p{i}.png": photo_png(i) for i in range(3)}
    for name, data in originals.items():
        assert upload(srv, job, name, data)[1]["added"] == [name]
    status, d = srv.call("POST", f"/api/jobs/{job}/start/protect", {"strength": "nope"})
    assert status == 400 and "unknown strength" in d["error"]
    status, d = srv.call("POST", f"/api/jobs/{job}/start/verify", {})
    assert status == 400 and "protect the images first" in d["error"]
    status, _ = srv.call("POST", f"/api/jobs/{job}/start/protect", {"strength": "low", "single_class": True})
    assert status == 202
    other = new_job(srv)
    upload(srv, other, "x.png", photo_png(4))
    status, d = srv.call("POST", f"/api/jobs/{other}/start/protect", {"strength": "low"})
    assert status == 409 and "already going on" in d["error"]
    status, d = upload(srv, job, "late.png", photo_png(5))
    assert status == 409 and "while the job runs" in d["error"]
    d = srv.wait(job)
    assert d["protect"]["state"] == "done" and d["protect"]["fraction"] == 1.0, d
    assert d["result"]["images"] == 3 and d["result"]["eps_255"] == 4 and len(d["images"]) == 3
    for n, e in enumerate(d["images"]):
        assert 0 < e["linf_255"] <= 4 and e["psnr"] > 30
        for kind in ("before", "after", "perturbation"):
            status, png = srv.call("GET", f"/api/jobs/{job}/images/{n}/{kind}.png", query_token=True)
            assert status == 200
            with Image.open(io.BytesIO(png)) as im:
                assert im.size == (40, 32)
        with Image.open(io.BytesIO(srv.call("GET", f"/api/jobs/{job}/images/{n}/perturbation.png")[1])) as im:
            amp = np.asarray(im).astype(int)
        assert amp.min() < 100 and amp.max() > 155  # the change, amplified to be seen
    assert srv.call("GET", f"/api/jobs/{job}/images/3/before.png")[0] == 404
    status, data = srv.call("GET", f"/api/jobs/{job}/download", query_token=True)
    assert status == 200
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert sorted(z.namelist()) == ["manifest.json", "p0.png", "p1.png", "p2.png"]
        for name, raw in originals.items():
            with Image.open(io.BytesIO(z.read(name))) as a, Image.open(io.BytesIO(raw)) as b:
                diff = np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int))
            assert a.format == "PNG" and 0 < diff.max() <= 4  # lossless, within the low budget
    status, _ = srv.call("POST", f"/api/jobs/{job}/start/verify", {})
    assert status == 202
    d = srv.wait(job, "verify")
    assert d["verify"]["state"] == "done", d
    rep = d["verify_result"]["report"]
    assert rep["images"] == 3 and "\n" not in rep["verdict"] and "verdict:" in d["verify_result"]["table"]
    assert set(rep["results"]) == {"none", "jpeg20", "grayscale"}


def test_folder_jobs_are_checked(srv, tmp_path):
    for folder, words in [("relative/path", "full path"), (str(tmp_path / "missing"), "no such folder"),
                          (str(srv.work), "contains the server's work folder"),
                          (str(srv.work / "jobs"), "inside the server's own work folder")]:
        status, d = srv.call("POST", "/api/jobs", {"folder": folder})
        assert status == 400 and words in d["error"], d
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.png").write_bytes(photo_png(0))
    job = new_job(srv, folder=str(tmp_path / "mine"))
    status, d = upload(srv, job, "b.png", photo_png(1))
    assert status == 400 and "takes no uploads" in d["error"]
    assert not (tmp_path / "mine" / "b.png").exists()


def test_cancel_then_continue_and_restart_resumes(tmp_path):
    options = Options(reference=reference_npz(tmp_path / "ref.npz"), device="cpu",
                      protect={**TINY, "epochs": 30, "unit_size": 1}, limits=LIMITS)
    s = start_server(tmp_path / "work", options)
    try:
        job = new_job(s)
        for i in range(3):
            upload(s, job, f"p{i}.png", photo_png(i))
        s.call("POST", f"/api/jobs/{job}/start/protect", {"strength": "low"})
        status, d = s.call("POST", f"/api/jobs/{job}/cancel")
        assert status == 200 and d["cancelled"] and d["protect"]["state"] == "cancelled"
        assert s.call("POST", f"/api/jobs/{job}/cancel")[1]["cancelled"] is False
        # A server that stopped during a run: the status says running, its worker is gone.
        s.call("POST", f"/api/jobs/{job}/start/protect", {"strength": "low"})
    finally:
        s.stop()  # stops the worker; the task is left "interrupted"
    jobs = Jobs(tmp_path / "work", options)
    assert jobs.state(jobs.get(job), "protect") == "interrupted"
    s = start_server(tmp_path / "work", options)  # the restarted server continues it
    try:
        d = s.wait(job)
        assert d["protect"]["state"] == "done" and d["result"]["images"] == 3
    finally:
        s.stop()


def test_remote_bind_needs_the_explicit_option(tmp_path, capsys):
    with pytest.raises(UnlearnableError, match="allow_remote"):
        serve(tmp_path, host="0.0.0.0", port=0)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-remote" in err
    assert not any(tmp_path.iterdir())
    with pytest.raises(SystemExit) as e:
        main(["serve", "--port", "70000"])
    assert e.value.code == 2 and "0..65535" in capsys.readouterr().err


def test_worker_never_writes_outside_the_job(srv):
    # Every file the server has written lives under its work folder's jobs/ID/.
    stray = [p for p in srv.work.rglob("*") if p.is_file() and p.relative_to(srv.work).parts[0] != "jobs"]
    assert stray == []
    assert all(len(p.relative_to(srv.work).parts) >= 3 for p in srv.work.rglob("*") if p.is_file())


def test_a_connection_lost_during_an_upload_leaves_nothing(srv):
    job = new_job(srv)
    host, port = srv.url.removeprefix("http://").split(":")
    inbox = srv.work / "jobs" / job / "input"
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall((f"POST /api/jobs/{job}/files?name=half.png HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"X-Token: {TOKEN}\r\nContent-Length: 100000\r\n\r\n").encode() + photo_png(0)[:500])
        t0 = time.time()
        while not list(inbox.glob(".upload-*.tmp")) and time.time() - t0 < 10:
            time.sleep(0.05)
        assert list(inbox.glob(".upload-*.tmp"))  # the bytes are arriving, in the job's own folder
    t0 = time.time()
    while any(inbox.iterdir()) and time.time() - t0 < 10:
        time.sleep(0.1)
    assert not any(inbox.iterdir())  # neither the image nor its temporary file
    assert upload(srv, job, "whole.png", photo_png(0))[1]["added"] == ["whole.png"]  # the server goes on
