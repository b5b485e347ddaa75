"""Download and unpack a dataset into --data_dir: Spawrious (pools 0 and 1) or MNIST.

    python -m domainbed.scripts.download --dataset spawrious --data_dir ./data
    python -m domainbed.scripts.download --dataset mnist --data_dir ./data

The download is resumable (bytes go to `<archive>.part`; rerunning the same
command continues it with an HTTP Range request, also after Ctrl-C, which exits
130 and keeps the partial file) and size-checked. The archive is validated
member by member before anything is written, extracted into a temporary folder
and moved into place in one rename, so an interrupted or hostile archive never
leaves a half-made `spawrious224/` behind.

The archive cache is `<data_dir>/spawrious224.tar.gz`. An archive already there
(put there by hand, or kept by `--keep_archive` or an interrupted extraction) is
used instead of downloading. An archive that is refused (corrupt, unsafe
members, no `spawrious224/` folder) is never reused silently:
- one downloaded by this run is deleted (it is only a download, and unusable),
  so the next run, typically with another `--url`, downloads afresh;
- one that was already there is left alone, and the message says to delete it.

MNIST (for ColoredMNIST) goes where `torchvision.datasets.MNIST(root=data_dir)`
reads it, `<data_dir>/MNIST/raw/`: torchvision's four .gz files, fetched from its
first mirror (or from the folder `--url` names), each resumable as above, checked
against torchvision's md5 (a mismatch is an error, whatever the `--url`), then
decompressed to a temporary file renamed into place. Files already decompressed
there are kept; a refused .gz is handled as a refused archive above.

Bad input (a malformed `--url`, an unusable `--data_dir`, an unreachable server,
a refused archive) is one `error:` line and exit status 2.
"""
from __future__ import annotations

import argparse
import errno
import gzip
import hashlib
import http.client
import os
import posixpath
import re
import shutil
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from typing import Callable, Mapping, NoReturn, Optional, Sequence

from tqdm import tqdm

from domainbed.lib import misc

SPAWRIOUS_URL = "https://www.dropbox.com/s/e40j553480h3f3s/spawrious224.tar.gz?dl=1"
SPAWRIOUS_TOP = "spawrious224"
CHUNK_SIZE = 1 << 20  # bytes per read (a module constant so tests can shrink it)
URL_EXAMPLE = "e.g. --url https://example.org/spawrious224.tar.gz"
ARCHIVE = "the archive"  # what --url names, in messages


class DownloadError(misc.UserInputError):
    """A download or extraction problem, reported to the user as one message."""


class ArchiveRefused(DownloadError):
    """An archive that must not be extracted; `problem` is the reason without the advice,
    so a caller that deleted the archive can give other advice than "delete it"."""

    def __init__(self, problem: str, advice: str):
        super().__init__(f"{problem}; {advice}")
        self.problem = problem


class DownloadInterrupted(Exception):
    """Ctrl-C, with what was kept and how to go on: `main` prints it and exits 130."""


def _brief(exc: object) -> str:
    """An exception's text as a short single line (tarfile and http.client put newlines and
    whole server answers in theirs), so every error stays one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[0].rstrip(":").split()) if lines else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def check_url(url: str, what: str = ARCHIVE, example: str = URL_EXAMPLE) -> None:
    """Refuse a URL that urllib would fail on with a traceback, or fetch without resuming
    (ftp:, file:): only http:// and https:// addresses with a host are downloaded. `what`
    and `example` say in the message what --url should name."""
    def refuse(why: str) -> NoReturn:
        raise DownloadError(
            f"--url {url!r} is not a valid download URL ({why}); give an http:// or https:// "
            f"address of {what}, {example}.")

    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (a bad port raises ValueError only when read)
    except ValueError as exc:
        refuse(str(exc))
    if not parts.scheme or (not parts.netloc and "://" not in url):
        refuse("no http:// or https:// scheme")
    if parts.scheme.lower() not in ("http", "https"):
        refuse(f"unsupported scheme {parts.scheme}://")
    if not parts.hostname:
        refuse("no host")
    if any(c.isspace() or ord(c) < 32 for c in url):
        refuse("it contains spaces or control characters")


def _content_range(value: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """(start, total) from a Content-Range header; None where absent or '*'."""
    match = re.match(r"\s*bytes\s+(\d+|\*)(?:-\d+)?/(\d+|\*)", value or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (None if start == "*" else int(start)), (None if total == "*" else int(total))


def download_file(url: str, dest: str, chunk_size: Optional[int] = None, what: str = ARCHIVE,
                  example: str = URL_EXAMPLE) -> str:
    """Download `url` to `dest`, resuming `dest + '.part'` if a previous try was cut off.

    Only a transfer whose size matches the announced size is renamed to `dest`,
    so `dest` existing always means a complete file. `what` and `example` are check_url's.
    """
    check_url(url, what, example)
    chunk_size = chunk_size or CHUNK_SIZE
    part = dest + ".part"
    have = os.path.getsize(part) if os.path.isfile(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "domainbed-download"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        with exc:
            _, total = _content_range(exc.headers.get("Content-Range") if exc.headers else None)
        if exc.code == 416 and have:  # nothing left to send: complete already, or a stale .part
            if total == have:
                os.replace(part, dest)
                return dest
            os.remove(part)
            return download_file(url, dest, chunk_size)
        raise DownloadError(f"HTTP {exc.code} ({exc.reason}) from {url}") from None
    except (http.client.HTTPException, ValueError) as exc:  # not an HTTP server, a bad URL
        raise DownloadError(
            f"{url} did not give a valid HTTP answer ({type(exc).__name__}: {_brief(exc)}); "
            f"check that --url is the address of {what}, {example}.") from None

    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != have:
                raise DownloadError(
                    f"{url} resumed at byte {start} instead of {have}; delete {part} and rerun.")
            if total is None and length is not None:
                total = have + length
            mode = "ab"
        elif response.status == 200:  # the server ignores Range: start over
            have, total, mode = 0, length, "wb"
        else:
            raise DownloadError(f"unexpected HTTP {response.status} from {url}")

        cut_short = None
        with open(part, mode) as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=os.path.basename(dest), file=sys.stderr) as bar:
            # read1: what has arrived (up to chunk_size), so Ctrl-C keeps nearly all of it
            read = getattr(response, "read1", response.read)
            while True:
                try:
                    chunk = read(chunk_size)
                except Exception as exc:  # connection reset, timeout, IncompleteRead...
                    cut_short = exc
                    break
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))

    size = os.path.getsize(part)
    if (total is not None and size != total) or (total is None and cut_short is not None):
        of = f" of {total}" if total is not None else ""
        raise DownloadError(
            f"download of {url} was cut off at {size}{of} bytes; the partial file is kept "
            f"at {part}: rerun the same command to resume it.")
    os.replace(part, dest)
    return dest


def _check_member(member: tarfile.TarInfo, archive: str) -> None:
    """Refuse a member that could write outside the destination or is not a plain file/folder."""
    name = member.name

    def refuse(why: str) -> NoReturn:
        raise ArchiveRefused(f"unsafe member {name!r} in {archive}: {why}", _delete_advice(archive))

    def escapes(path: str) -> bool:
        return path.startswith("/") or os.path.isabs(path) or ".." in path.split("/")

    if name.startswith("/") or os.path.isabs(name):
        refuse("absolute path")
    if ".." in name.replace("\\", "/").split("/"):
        refuse("'..' in path")
    if member.isdev():
        refuse("device or fifo")
    if member.issym():
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
        if member.linkname.startswith("/") or escapes(target):
            refuse(f"symlink to {member.linkname!r} points outside the archive")
    if member.islnk():
        if escapes(member.linkname) or escapes(posixpath.normpath(member.linkname)):
            refuse(f"hard link to {member.linkname!r} points outside the archive")


def _delete_advice(archive: str) -> str:
    return f"refusing to extract it: delete {archive} and rerun to download the archive again."


def safe_extract(archive: str, dest_dir: str, top: str = SPAWRIOUS_TOP) -> str:
    """Extract `archive`'s `top/` folder to `dest_dir/top` all at once, or not at all.

    Every member is checked before anything is written; extraction goes to a
    temporary folder that is renamed into place, so failure leaves no `top/`.
    """
    final = os.path.join(dest_dir, top)
    if os.path.lexists(final):
        raise DownloadError(f"{final} already exists; remove it to extract {archive} again.")
    tmp = os.path.join(dest_dir, f".{top}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, archive)
                os.makedirs(tmp)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # Python without extraction filters: the checks above still apply
                    tar.extractall(tmp, members=members)
        except tarfile.FilterError as exc:
            raise ArchiveRefused(f"unsafe member {exc.tarinfo.name!r} in {archive}: {_brief(exc)}",
                                 _delete_advice(archive)) from None
        except (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error,
                gzip.BadGzipFile) as exc:
            raise ArchiveRefused(
                f"{archive} is not a readable tar.gz archive ({_brief(exc)})",
                "it is probably corrupt or incomplete: delete it and download again "
                "(rerun this command).") from None
        extracted = os.path.join(tmp, top)
        if not os.path.isdir(extracted):
            raise ArchiveRefused(f"{archive} has no top-level {top}/ folder",
                                 f"is it the right archive? {_delete_advice(archive)}")
        os.replace(extracted, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _check_data_dir(data_dir: str) -> None:
    """Refuse, before any download, a --data_dir that cannot hold the dataset."""
    if not data_dir:
        raise DownloadError("--data_dir is empty; give the folder to download into, "
                            "e.g. --data_dir ./data")
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DownloadError(f"--data_dir {data_dir} is a file, not a folder; "
                            "give a folder (it is created if missing).")
    parent = os.path.dirname(os.path.abspath(data_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise DownloadError(f"--data_dir {data_dir} cannot be created: {parent} is a file, "
                            "not a folder; give another --data_dir.")


def _check_not_in_the_way(path: str, kind: str) -> None:
    """A file where a folder goes (or the reverse) would fail only after a long download."""
    if os.path.lexists(path) and os.path.isdir(path) != (kind == "folder"):
        raise DownloadError(f"{path} is in the way (it should be a {kind}); "
                            "move or remove it and rerun.")


def _interrupted_download(url: str, archive: str) -> DownloadInterrupted:
    part = archive + ".part"
    if os.path.isfile(part) and os.path.getsize(part):
        return DownloadInterrupted(
            f"download of {url} interrupted; the {os.path.getsize(part)} bytes received so far "
            f"are kept in {part}: rerun the same command to resume it.")
    return DownloadInterrupted(f"download of {url} interrupted before any data was saved; "
                               "rerun the same command to start it again.")


def _fetch(url: str, archive: str, **url_help: str) -> None:
    """Download the archive, turning network failures and Ctrl-C into messages; `url_help`
    (download_file's `what` and `example`) says what --url should name."""
    print(f"Downloading {url} to {archive}")
    try:
        download_file(url, archive, **url_help)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise DownloadError(
            f"could not reach {url} ({_brief(getattr(exc, 'reason', exc))}). You can download "
            f"the archive by hand into {archive} and rerun this command.") from None
    except KeyboardInterrupt:
        raise _interrupted_download(url, archive) from None


def _extract(archive: str, data_dir: str, url: str, downloaded: bool) -> None:
    """Extract, deleting an archive this run downloaded if it is refused, so no rerun reuses it."""
    print(f"Extracting {archive} ...")
    try:
        safe_extract(archive, data_dir, SPAWRIOUS_TOP)
    except ArchiveRefused as exc:
        if not downloaded:
            raise  # the user's file: the message says to delete it
        os.remove(archive)
        raise DownloadError(
            f"refused the archive downloaded from {url}: {exc.problem}. The download was "
            f"deleted, so a rerun downloads anew: check that --url gives the Spawrious archive "
            f"({SPAWRIOUS_TOP}.tar.gz) and rerun."
        ) from None
    except KeyboardInterrupt:
        raise DownloadInterrupted(
            f"interrupted while extracting {archive}; nothing was extracted and the archive is "
            "kept: rerun the same command to extract it.") from None


def download_spawrious(data_dir: str, url: str = SPAWRIOUS_URL, keep_archive: bool = False) -> str:
    """Put Spawrious (pools 0 and 1) at `data_dir/spawrious224`, reusing what is already there."""
    _check_data_dir(data_dir)
    check_url(url)  # bad input is an error even where nothing needs downloading
    final = os.path.join(data_dir, SPAWRIOUS_TOP)
    if os.path.isdir(final):
        print(f"{final} is already there; nothing to download.")
        return final
    archive = os.path.join(data_dir, SPAWRIOUS_TOP + ".tar.gz")
    _check_not_in_the_way(final, "folder")
    _check_not_in_the_way(archive, "file")
    os.makedirs(data_dir, exist_ok=True)
    downloaded = not os.path.isfile(archive)
    if downloaded:
        _fetch(url, archive)
    else:
        print(f"Using the archive already at {archive} (delete it to download {url} instead).")
    _extract(archive, data_dir, url, downloaded)
    if not keep_archive:
        os.remove(archive)
    print(f"Spawrious is ready at {final}")
    return final


MNIST_RAW = os.path.join("MNIST", "raw")  # torchvision.datasets.MNIST's folder under its root
MNIST_URL_HELP = {"what": "a folder holding MNIST's four .gz files",
                  "example": "e.g. --url https://example.org/mnist/"}


def mnist_sources() -> tuple[str, dict[str, str]]:
    """torchvision's first MNIST mirror and its {.gz file name: md5} table, so that the
    files are those torchvision.datasets.MNIST downloads and checks."""
    import torchvision
    from torchvision.datasets import MNIST  # lazy: torchvision takes a second to import

    mirrors, resources = getattr(MNIST, "mirrors", None), getattr(MNIST, "resources", None)
    if not mirrors or not resources:
        raise DownloadError(f"torchvision {torchvision.__version__} has no MNIST.mirrors and "
                            "MNIST.resources tables; install the version in constraints.txt.")
    return mirrors[0], dict(resources)


def _md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()


def _gunzip(gz: str, target: str) -> None:
    """Decompress `gz` to a temporary file, then rename it to `target` (all or nothing)."""
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK_SIZE)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _mnist_file(url: str, gz: str, md5: str, keep_archive: bool) -> None:
    """Fetch (unless it is there), check and decompress one .gz into its idx file. A refused
    .gz this run downloaded is deleted (a rerun downloads anew); one already there is kept."""
    target = os.path.splitext(gz)[0]
    _check_not_in_the_way(gz, "file")
    _check_not_in_the_way(target, "file")
    downloaded = not os.path.isfile(gz)
    if downloaded:
        _fetch(url, gz, **MNIST_URL_HELP)
    else:
        print(f"Using the file already at {gz} (delete it to download {url} instead).")

    def refuse(problem: str) -> NoReturn:
        if not downloaded:
            raise DownloadError(f"refused {gz}: {problem}; delete it and rerun to download it "
                                "again.")
        os.remove(gz)
        raise DownloadError(
            f"refused the file downloaded from {url}: {problem}. The download was deleted, so a "
            f"rerun downloads anew; if it fails again, give --url another mirror: "
            f"{MNIST_URL_HELP['what']} ({MNIST_URL_HELP['example']}).")

    found = _md5(gz)
    if found != md5:
        refuse(f"its md5 is {found}, not {md5}")
    try:
        _gunzip(gz, target)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        refuse(f"it is not a readable .gz file ({_brief(exc)})")
    if not keep_archive:
        os.remove(gz)


def download_mnist(data_dir: str, url: Optional[str] = None, keep_archive: bool = False,
                   md5s: Optional[Mapping[str, str]] = None) -> str:
    """Put MNIST's four idx files at `data_dir/MNIST/raw` (torchvision's layout), reusing
    what is already there; `url` replaces torchvision's mirror (the folder of the .gz
    files), `md5s` ({.gz name: md5}) its md5 table (tests serve files of their own)."""
    _check_data_dir(data_dir)
    mirror, table = mnist_sources()
    base = mirror if url is None else url
    check_url(base, **MNIST_URL_HELP)  # bad input is an error even where nothing is missing
    table = dict(table if md5s is None else md5s)
    raw = os.path.join(data_dir, MNIST_RAW)
    _check_not_in_the_way(os.path.dirname(raw), "folder")
    _check_not_in_the_way(raw, "folder")
    missing = {name: md5 for name, md5 in table.items()
               if not os.path.isfile(os.path.join(raw, os.path.splitext(name)[0]))}
    if not missing:
        print(f"MNIST is already at {raw}; nothing to download.")
        return raw
    os.makedirs(raw, exist_ok=True)
    folder = base if base.endswith("/") else base + "/"
    for name, md5 in missing.items():
        _mnist_file(folder + name, os.path.join(raw, name), md5, keep_archive)
    print(f"MNIST is ready at {raw}")
    return raw


def _os_error_message(exc: OSError, data_dir: str) -> str:
    """A file-system failure as one line that names the file and the fix."""
    where = exc.filename or data_dir
    if isinstance(exc, PermissionError):
        return (f"cannot write {where} (permission denied); choose a --data_dir you can write to "
                "or fix its permissions, then rerun.")
    if exc.errno == errno.ENOSPC:
        return (f"no space left on the device while writing {where}; free some space or "
                "choose another --data_dir, then rerun (a partial download resumes).")
    return f"{exc.strerror or exc} ({where}); check --data_dir {data_dir} and rerun."


DATASETS: dict[str, Callable[..., str]] = {"spawrious": download_spawrious,
                                           "mnist": download_mnist}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; bad input gives one `error:` line and exit status 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--url", default=None, help="download from this URL instead (a mirror)")
    parser.add_argument("--keep_archive", action="store_true",
                        help="keep the downloaded .tar.gz (or .gz files) after extracting")
    args = parser.parse_args(argv)
    kwargs = {"keep_archive": args.keep_archive}
    if args.url is not None:
        kwargs["url"] = args.url
    try:
        DATASETS[args.dataset](args.data_dir, **kwargs)
    except misc.UserInputError as exc:
        print(f"error: {' '.join(str(exc).splitlines())}", file=sys.stderr)  # always one line
        return 2
    except DownloadInterrupted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to go on.", file=sys.stderr)
        return 130
    except urllib.error.URLError as exc:
        print(f"error: could not reach {args.url or 'the download server'}: {exc.reason}",
              file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {_os_error_message(exc, args.data_dir)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
