"""Bad input to `python -m domainbed.scripts.download` (issue 12): one `error:` line, exit 2
(130 for Ctrl-C), no traceback, nothing finished lost, and a rerun that does the right thing.

Everything runs in-process through `main(argv)` against a 127.0.0.1 server started here.
"""
import errno
import io
import os
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from domainbed.scripts import download

FILES = {
    "spawrious224/0/dirt/bulldog/a.png": 12000,
    "spawrious224/1/beach/corgi/c.png": 15000,
}


def make_archive(files=None, extra=()):
    """tar.gz bytes of random files (`files`: name -> size) plus `extra` (TarInfo, payload)."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, size in (FILES if files is None else files).items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(rng.bytes(size)))
        for info, payload in extra:
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def traversal_member():
    info = tarfile.TarInfo("../evil.txt")
    info.size = 4
    return info, b"evil"


GOOD = make_archive()
BAD = {
    "corrupt": np.random.default_rng(1).bytes(20000),
    "wrong contents": make_archive({"other/x.png": 100}),
    "path traversal": make_archive(extra=[traversal_member()]),
}
BAD_PHRASE = {
    "corrupt": "not a readable tar.gz archive",
    "wrong contents": "no top-level spawrious224/ folder",
    "path traversal": "unsafe member '../evil.txt'",
}


class Server:
    """A 127.0.0.1 HTTP server of `files` (path -> bytes), with Range support."""

    def __init__(self):
        self.files, self.ranges = {}, []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                header = self.headers.get("Range")
                state.ranges.append((self.path, header))
                data = state.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = int(header.split("=")[1].rstrip("-")) if header else 0
                self.send_response(206 if header else 200)
                if header:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.timeout = 5
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path, data):
        self.files[path] = data
        return self.base + path


@pytest.fixture
def server():
    srv = Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    thread.join(timeout=5)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def run(run_main, tmp_path):
    """`run(*args)`: download.main with --dataset spawrious --data_dir tmp_path/data."""
    data_dir = tmp_path / "data"

    def go(*args, data_dir=data_dir):
        result = run_main(download.main, "--dataset", "spawrious", "--data_dir", data_dir, *args)
        assert "Traceback" not in result.stderr + result.stdout
        return result
    go.data_dir = data_dir
    return go


def assert_one_error(result, code, *phrases):
    assert result.returncode == code, result
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def assert_extracted(data_dir):
    for name, size in FILES.items():
        assert os.path.getsize(os.path.join(data_dir, name)) == size
    assert not [n for n in os.listdir(data_dir) if n.startswith(".spawrious224.tmp")]


# --- malformed URLs -------------------------------------------------------------------------

@pytest.mark.parametrize("url, why", [
    ("notaurl", "no http:// or https:// scheme"),
    ("example.org/spawrious224.tar.gz", "no http:// or https:// scheme"),
    ("ftp://127.0.0.1/spawrious224.tar.gz", "unsupported scheme ftp://"),
    ("file:///tmp/spawrious224.tar.gz", "unsupported scheme file://"),
    ("http://", "no host"),
    ("http://127.0.0.1:notaport/x.tar.gz", "Port could not be cast"),
    ("http://127.0.0.1:99999/x.tar.gz", "out of range"),
    ("http://[::1/x.tar.gz", "Invalid IPv6 URL"),
    ("http://127.0.0.1/a b.tar.gz", "spaces"),
    ("", "no http:// or https:// scheme"),
])
def test_malformed_url(run, url, why):
    result = run("--url", url)
    assert_one_error(result, 2, f"--url {url!r} is not a valid download URL", why,
                     "https://example.org/spawrious224.tar.gz")
    assert not run.data_dir.exists()  # refused before anything was written


def test_malformed_url_leaves_extracted_data_alone(run):
    image = run.data_dir / "spawrious224" / "0" / "a.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"png")
    assert_one_error(run("--url", "notaurl"), 2, "not a valid download URL")
    assert image.read_bytes() == b"png"


def test_unreachable_port(run):
    url = f"http://127.0.0.1:{free_port()}/spawrious224.tar.gz"
    result = run("--url", url)
    assert_one_error(result, 2, f"could not reach {url}", "by hand into",
                     str(run.data_dir / "spawrious224.tar.gz"))


def test_not_an_http_server(run):
    """A port that answers something other than HTTP (here an SSH-like banner)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10)

    def answer():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.recv(4096)
            conn.sendall(b"SSH-2.0-OpenSSH_9.0\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.tar.gz"
    try:
        result = run("--url", url)
    finally:
        thread.join(timeout=10)
        listener.close()
    assert_one_error(result, 2, f"{url} did not give a valid HTTP answer", "--url")


def test_http_404(run, server):
    url = server.base + "/missing.tar.gz"
    assert_one_error(run("--url", url), 2, "HTTP 404", url)


# --- refused archives are never reused silently ----------------------------------------------

@pytest.mark.parametrize("kind", sorted(BAD))
def test_refused_download_is_deleted_and_rerun_downloads_anew(run, server, kind):
    bad_url = server.url("/bad.tar.gz", BAD[kind])
    result = run("--url", bad_url)
    assert_one_error(result, 2, f"refused the archive downloaded from {bad_url}", BAD_PHRASE[kind],
                     "The download was deleted", "rerun")
    assert sorted(os.listdir(run.data_dir)) == []  # no archive, no .part, no half-made folder

    good_url = server.url("/good.tar.gz", GOOD)
    result = run("--url", good_url)
    assert result.returncode == 0, result
    assert [path for path, _ in server.ranges] == ["/bad.tar.gz", "/good.tar.gz"]
    assert_extracted(run.data_dir)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_refused_archive_put_by_hand_is_kept_and_refused_again(run, server, kind):
    run.data_dir.mkdir()
    archive = run.data_dir / "spawrious224.tar.gz"
    archive.write_bytes(BAD[kind])
    good_url = server.url("/good.tar.gz", GOOD)
    for _ in range(2):  # a rerun, even with a good --url, says the same: never a silent reuse
        result = run("--url", good_url)
        assert_one_error(result, 2, BAD_PHRASE[kind], f"delete {archive}" if kind != "corrupt"
                         else "delete it and download again", str(archive))
        assert archive.read_bytes() == BAD[kind]  # the user's file is not ours to delete
        assert sorted(os.listdir(run.data_dir)) == ["spawrious224.tar.gz"]
    assert server.ranges == []

    archive.unlink()  # what the message says to do
    assert run("--url", good_url).returncode == 0
    assert_extracted(run.data_dir)


def test_archive_already_there_is_named(run, server):
    run.data_dir.mkdir()
    (run.data_dir / "spawrious224.tar.gz").write_bytes(GOOD)
    url = server.url("/good.tar.gz", GOOD)
    result = run("--url", url)
    assert result.returncode == 0, result
    assert f"Using the archive already at {run.data_dir / 'spawrious224.tar.gz'}" in result.stdout
    assert f"delete it to download {url} instead" in result.stdout
    assert server.ranges == []
    assert_extracted(run.data_dir)


# --- --data_dir problems --------------------------------------------------------------------

def test_data_dir_is_a_file(run, tmp_path):
    path = tmp_path / "file"
    path.write_text("keep me")
    assert_one_error(run(data_dir=path), 2, f"--data_dir {path} is a file", "give a folder")
    assert path.read_text() == "keep me"


def test_data_dir_under_a_file(run, tmp_path):
    (tmp_path / "file").write_text("keep me")
    path = tmp_path / "file" / "sub" / "data"
    assert_one_error(run(data_dir=path), 2, "cannot be created", str(tmp_path / "file"),
                     "another --data_dir")
    assert (tmp_path / "file").read_text() == "keep me"


def test_empty_data_dir(run):
    assert_one_error(run(data_dir=""), 2, "--data_dir is empty")


@pytest.mark.parametrize("name, kind", [("spawrious224", "folder"),
                                        ("spawrious224.tar.gz", "file")])
def test_something_in_the_way_is_found_before_downloading(run, server, name, kind):
    run.data_dir.mkdir()
    if kind == "folder":
        (run.data_dir / name).write_text("keep me")
    else:
        (run.data_dir / name).mkdir()
    result = run("--url", server.url("/good.tar.gz", GOOD))
    assert_one_error(result, 2, f"{run.data_dir / name} is in the way", f"should be a {kind}")
    assert server.ranges == []
    if kind == "folder":
        assert (run.data_dir / name).read_text() == "keep me"


@pytest.mark.parametrize("code, phrase", [
    (errno.EACCES, "permission denied"),
    (errno.ENOSPC, "no space left on the device"),
])
def test_file_system_errors_are_one_line(run, server, monkeypatch, code, phrase):
    """Root ignores permissions, so the failure is injected where the file is written."""
    def fail(url, dest, chunk_size=None):
        exc_type = PermissionError if code == errno.EACCES else OSError
        raise exc_type(code, os.strerror(code), dest + ".part")

    monkeypatch.setattr(download, "download_file", fail)
    result = run("--url", server.url("/good.tar.gz", GOOD))
    assert_one_error(result, 2, phrase, str(run.data_dir / "spawrious224.tar.gz.part"), "rerun")


# --- Ctrl-C ---------------------------------------------------------------------------------

class InterruptingBar:
    """Stands in for tqdm: raises KeyboardInterrupt after `after` chunks were written."""

    after = 2

    def __init__(self, *args, **kwargs):
        self.chunks = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        self.chunks += 1
        if self.chunks >= self.after:
            raise KeyboardInterrupt


def test_ctrl_c_during_download_keeps_the_part_and_rerun_resumes(run, server, monkeypatch):
    url = server.url("/good.tar.gz", GOOD)
    monkeypatch.setattr(download, "CHUNK_SIZE", 4096)
    monkeypatch.setattr(download, "tqdm", InterruptingBar)
    result = run("--url", url)
    part = run.data_dir / "spawrious224.tar.gz.part"
    kept = part.read_bytes()
    assert 0 < len(kept) < len(GOOD) and GOOD.startswith(kept)  # what arrived is kept
    assert_one_error(result, 130, f"download of {url} interrupted", f"{len(kept)} bytes",
                     str(part), "rerun the same command to resume it")

    monkeypatch.undo()
    result = run("--url", url)
    assert result.returncode == 0, result
    assert server.ranges == [("/good.tar.gz", None), ("/good.tar.gz", f"bytes={len(kept)}-")]
    assert_extracted(run.data_dir)


def test_ctrl_c_before_any_data(run, server, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "download_file", interrupted)
    result = run("--url", server.url("/good.tar.gz", GOOD))
    assert_one_error(result, 130, "interrupted before any data was saved", "rerun")


def test_ctrl_c_during_extraction_keeps_the_archive(run, server, monkeypatch):
    url = server.url("/good.tar.gz", GOOD)
    real_extract = download.safe_extract

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "safe_extract", interrupted)
    result = run("--url", url)
    archive = run.data_dir / "spawrious224.tar.gz"
    assert_one_error(result, 130, f"interrupted while extracting {archive}",
                     "the archive is kept", "rerun")
    assert archive.read_bytes() == GOOD

    monkeypatch.setattr(download, "safe_extract", real_extract)
    result = run("--url", url)
    assert result.returncode == 0, result
    assert "Using the archive already at" in result.stdout
    assert len(server.ranges) == 1  # not downloaded twice
    assert_extracted(run.data_dir)
