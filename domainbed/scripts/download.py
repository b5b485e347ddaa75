"""Download and unpack a dataset into --data_dir (for now: Spawrious, pools 0 and 1).

    python -m domainbed.scripts.download --dataset spawrious --data_dir ./data

The download is resumable (bytes go to `<archive>.part`; rerunning the same
command continues it with an HTTP Range request) and size-checked. The archive
is validated member by member before anything is written, extracted into a
temporary folder and moved into place in one rename, so an interrupted or
hostile archive never leaves a half-made `spawrious224/` behind.
"""
from __future__ import annotations

import argparse
import gzip
import os
import posixpath
import re
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from typing import Callable, Optional, Sequence

from tqdm import tqdm

from domainbed.lib import misc

SPAWRIOUS_URL = "https://www.dropbox.com/s/e40j553480h3f3s/spawrious224.tar.gz?dl=1"
SPAWRIOUS_TOP = "spawrious224"


class DownloadError(misc.UserInputError):
    """A download or extraction problem, reported to the user as one message."""


def _content_range(value: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """(start, total) from a Content-Range header; None where absent or '*'."""
    match = re.match(r"\s*bytes\s+(\d+|\*)(?:-\d+)?/(\d+|\*)", value or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (None if start == "*" else int(start)), (None if total == "*" else int(total))


def download_file(url: str, dest: str, chunk_size: int = 1 << 20) -> str:
    """Download `url` to `dest`, resuming `dest + '.part'` if a previous try was cut off.

    Only a transfer whose size matches the announced size is renamed to `dest`,
    so `dest` existing always means a complete file.
    """
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
            while True:
                try:
                    chunk = response.read(chunk_size)
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

    def refuse(why: str) -> None:
        raise DownloadError(f"unsafe member {name!r} in {archive}: {why}; refusing to extract.")

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
            raise DownloadError(
                f"unsafe member {exc.tarinfo.name!r} in {archive}: {exc}; refusing to extract.") from None
        except (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error,
                gzip.BadGzipFile) as exc:
            raise DownloadError(
                f"{archive} is not a readable tar.gz archive ({exc}); it is probably corrupt or "
                "incomplete: delete it and download again.") from None
        extracted = os.path.join(tmp, top)
        if not os.path.isdir(extracted):
            raise DownloadError(f"{archive} has no top-level {top}/ folder; is it the right archive?")
        os.replace(extracted, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def download_spawrious(data_dir: str, url: str = SPAWRIOUS_URL, keep_archive: bool = False) -> str:
    """Put Spawrious (pools 0 and 1) at `data_dir/spawrious224`, reusing what is already there."""
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DownloadError(f"--data_dir {data_dir} is a file, not a folder.")
    final = os.path.join(data_dir, SPAWRIOUS_TOP)
    if os.path.isdir(final):
        print(f"{final} is already there; nothing to download.")
        return final
    os.makedirs(data_dir, exist_ok=True)
    archive = os.path.join(data_dir, SPAWRIOUS_TOP + ".tar.gz")
    if os.path.isfile(archive):
        print(f"Using the archive already at {archive}.")
    else:
        print(f"Downloading {url} to {archive}")
        try:
            download_file(url, archive)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise DownloadError(
                f"could not reach {url} ({getattr(exc, 'reason', exc)}). You can download the archive by hand "
                f"into {archive} and rerun this command.") from None
    print(f"Extracting {archive} ...")
    safe_extract(archive, data_dir, SPAWRIOUS_TOP)
    if not keep_archive:
        os.remove(archive)
    print(f"Spawrious is ready at {final}")
    return final


DATASETS: dict[str, Callable[..., str]] = {"spawrious": download_spawrious}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; bad input gives one `error:` line and exit status 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--url", default=None, help="download from this URL instead (a mirror)")
    parser.add_argument("--keep_archive", action="store_true",
                        help="keep the .tar.gz after extracting it")
    args = parser.parse_args(argv)
    kwargs = {"keep_archive": args.keep_archive}
    if args.url:
        kwargs["url"] = args.url
    try:
        DATASETS[args.dataset](args.data_dir, **kwargs)
    except misc.UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except urllib.error.URLError as exc:
        print(f"error: could not reach {args.url or 'the download server'}: {exc.reason}",
              file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
