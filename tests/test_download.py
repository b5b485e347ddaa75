"""domainbed.scripts.download against a local HTTP server and generated archives (no internet)."""
import io
import os
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import run_python_module

from domainbed.scripts import download
from domainbed.scripts.download import DownloadError

PATH = "/spawrious224.tar.gz"
CHUNK = 4096


class FakeServer:
    """State shared with the handler: the bytes served and how to misbehave."""

    def __init__(self):
        self.data = b""
        self.ranges = []     # Range header of every request (None where absent)
        self.requests = 0
        self.ignore_range = False
        self.cut_after = None  # send only this many body bytes, then close
        self.status = None     # e.g. 404: answer every request with it
        self.url = None


def make_handler(state):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def do_GET(self):
            state.requests += 1
            header = self.headers.get("Range")
            state.ranges.append(header)
            if state.status is not None or self.path != PATH:
                self.send_error(state.status or 404)
                return
            data, start = state.data, 0
            if header and not state.ignore_range:
                start = int(header.split("=")[1].rstrip("-"))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.cut_after is not None:
                body = body[:state.cut_after]
                self.close_connection = True
            self.wfile.write(body)
            self.wfile.flush()

    return Handler


@pytest.fixture
def server():
    state = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}{PATH}"
    yield state
    httpd.shutdown()
    httpd.server_close()


FILES = {
    "spawrious224/0/dirt/bulldog/a.png": 12000,
    "spawrious224/0/dirt/bulldog/b.png": 9000,
    "spawrious224/1/beach/corgi/c.png": 15000,
}


def make_archive(path, extra=()):
    """A small tar.gz of random files under spawrious224/; `extra` adds TarInfo members."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for name, size in FILES.items():
            info = tarfile.TarInfo(name)
            payload = rng.bytes(size)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for info, payload in extra:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    with open(path, "rb") as f:
        return f.read()


def file_member(name, payload=b"evil"):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload


def symlink_member(name, target):
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


@pytest.fixture
def archive_bytes(tmp_path):
    return make_archive(str(tmp_path / "src.tar.gz"))


def check_extracted(data_dir):
    for name, size in FILES.items():
        assert os.path.getsize(os.path.join(data_dir, name)) == size
    assert not [n for n in os.listdir(data_dir) if n.startswith(".spawrious224.tmp")]


def test_download_and_extract(server, archive_bytes, tmp_path):
    server.data = archive_bytes
    data_dir = str(tmp_path / "data")
    assert download.download_spawrious(data_dir, url=server.url) == os.path.join(data_dir, "spawrious224")
    check_extracted(data_dir)
    assert sorted(os.listdir(data_dir)) == ["spawrious224"]


def test_keep_archive(server, archive_bytes, tmp_path):
    server.data = archive_bytes
    download.download_spawrious(str(tmp_path), url=server.url, keep_archive=True)
    check_extracted(str(tmp_path))
    assert (tmp_path / "spawrious224.tar.gz").read_bytes() == archive_bytes


def test_resume_partial(server, archive_bytes, tmp_path):
    server.data = archive_bytes
    dest = str(tmp_path / "a.tar.gz")
    n = len(archive_bytes) // 3
    with open(dest + ".part", "wb") as f:
        f.write(archive_bytes[:n])
    download.download_file(server.url, dest, chunk_size=CHUNK)
    assert server.ranges == [f"bytes={n}-"]
    assert open(dest, "rb").read() == archive_bytes
    assert not os.path.exists(dest + ".part")


def test_server_ignoring_range_restarts(server, archive_bytes, tmp_path):
    server.data, server.ignore_range = archive_bytes, True
    dest = str(tmp_path / "a.tar.gz")
    with open(dest + ".part", "wb") as f:
        f.write(b"x" * 5000)  # wrong bytes: must be thrown away, not appended to
    download.download_file(server.url, dest, chunk_size=CHUNK)
    assert server.ranges == ["bytes=5000-"]
    assert open(dest, "rb").read() == archive_bytes


def test_cut_off_then_resume(server, archive_bytes, tmp_path):
    server.data, server.cut_after = archive_bytes, 10000
    data_dir = str(tmp_path)
    part = os.path.join(data_dir, "spawrious224.tar.gz.part")
    with pytest.raises(DownloadError, match=f"cut off at 10000 of {len(archive_bytes)} bytes") as err:
        download.download_spawrious(data_dir, url=server.url)
    assert "rerun" in str(err.value)
    assert os.path.getsize(part) == 10000
    assert not os.path.exists(os.path.join(data_dir, "spawrious224"))
    assert not os.path.exists(os.path.join(data_dir, "spawrious224.tar.gz"))

    server.cut_after = None
    download.download_spawrious(data_dir, url=server.url)
    assert server.ranges == [None, "bytes=10000-"]
    check_extracted(data_dir)
    assert not os.path.exists(part)


@pytest.mark.parametrize("member, name", [
    (file_member("../evil.txt"), "../evil.txt"),
    (file_member("/abs.txt"), "/abs.txt"),
    (symlink_member("spawrious224/link", "../../outside"), "spawrious224/link"),
])
def test_unsafe_members_rejected(tmp_path, member, name):
    archive = str(tmp_path / "bad.tar.gz")
    make_archive(archive, extra=[member])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DownloadError) as err:
        download.safe_extract(archive, str(dest))
    assert repr(name) in str(err.value) and archive in str(err.value)
    assert os.listdir(dest) == []
    assert sorted(os.listdir(tmp_path)) == ["bad.tar.gz", "dest"]


def test_corrupt_archive(tmp_path):
    archive = tmp_path / "spawrious224.tar.gz"
    archive.write_bytes(np.random.default_rng(1).bytes(20000))
    with pytest.raises(DownloadError, match="delete it and download again") as err:
        download.download_spawrious(str(tmp_path), url="http://127.0.0.1:9/unused")
    assert str(archive) in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["spawrious224.tar.gz"]


def test_truncated_gzip(tmp_path, archive_bytes):
    archive = tmp_path / "t.tar.gz"
    archive.write_bytes(archive_bytes[: len(archive_bytes) // 2])
    with pytest.raises(DownloadError, match="delete it and download again"):
        download.safe_extract(str(archive), str(tmp_path))
    assert not os.path.exists(tmp_path / "spawrious224")


def test_http_404(server, tmp_path):
    server.status = 404
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        download.download_spawrious(str(tmp_path), url=server.url)
    assert server.url in str(err.value)


def test_unreachable(tmp_path):
    with pytest.raises(DownloadError, match="could not reach") as err:
        download.download_spawrious(str(tmp_path), url="http://127.0.0.1:9/x.tar.gz")
    assert os.path.join(str(tmp_path), "spawrious224.tar.gz") in str(err.value)


def test_already_extracted_makes_no_request(server, tmp_path, capsys):
    (tmp_path / "spawrious224").mkdir()
    download.download_spawrious(str(tmp_path), url=server.url)
    assert server.requests == 0
    assert "already there" in capsys.readouterr().out


def test_cli_data_dir_is_a_file(tmp_path, run_main):
    path = tmp_path / "file"
    path.write_text("x")
    proc = run_main(download.main, "--dataset", "spawrious", "--data_dir", path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "is a file" in proc.stderr


def test_cli_downloads(server, archive_bytes, tmp_path):
    server.data = archive_bytes
    proc = run_python_module("domainbed.scripts.download", "--dataset", "spawrious",
                             "--data_dir", tmp_path, "--url", server.url, "--keep_archive")
    assert proc.returncode == 0, proc.stderr
    check_extracted(str(tmp_path))
    assert (tmp_path / "spawrious224.tar.gz").exists()
