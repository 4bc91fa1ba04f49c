"""Download Fashion-MNIST into a directory, verified by checksum, safe to run again.

The upstream .gz files are identified by sha256 (FASHION_MNIST_FILES). Repacked copies such as
Debian's dataset-fashion-mnist (same data, gzip header stripped of file name and timestamp, so
different bytes) are accepted when their decompressed IDX data matches FASHION_MNIST_IDX_SHA256.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from service.file_modes import replacement_mode

logger = logging.getLogger(__name__)

# sha256 of the upstream .gz files. Upstream publishes md5s only (8d4fb7e6c68d591d4c3dfef9ec88bf0d,
# 25c81989df183df01b3e8a0aad5dffbe, bef4ecab320f06d8554ea6380940ec79,
# bb300cfdad3c16e7a12a480ee83cd310 in this order); these sha256s are of files that match those
# md5s, rebuilt from the Debian copies by restoring the upstream gzip header (FNAME set, mtime
# 2017-08-31 10:50:06 UTC for train-*, 10:50:27 for t10k-*, XFL 0, OS 3).
FASHION_MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
# sha256 of the decompressed IDX data: what any faithful copy, however gzipped, must contain.
FASHION_MNIST_IDX_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# Plain HTTP is all the upstream S3 website endpoint serves; the checksums make up for it.
DEFAULT_BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SYSTEM_COPY = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0  # per socket operation, not for the whole file

Progress = Callable[[str, int, int], None]


class FetchError(RuntimeError):
    """A file could not be fetched; the message names the file or URL and what to do instead."""


class ChecksumError(FetchError):
    """A fetched or copied file does not have the expected content."""


def fetch_fashion_mnist(
    dest: Path,
    base_url: str = DEFAULT_BASE_URL,
    *,
    source_dir: Path | None = None,
    progress: Progress | None = None,
    download: bool = True,
) -> Path:
    """Put the four verified Fashion-MNIST .gz files into `dest` and return `dest`.

    Files already in `dest` with the right content are skipped; files present in `source_dir`
    are copied from there; the rest are downloaded from `base_url`, or with `download=False`
    are an error naming `source_dir` and the files it lacks (checked before anything is written).
    Each file is written to a temporary name in `dest`, verified, then renamed, so the final
    name only ever holds a verified file. `progress(file, bytes_done, bytes_total)` is called as
    data arrives (bytes_total is -1 when the server does not say); skipped files report
    done == total once.
    """
    if download:
        check_base_url(base_url)
    else:
        _check_source_dir(source_dir, dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for name in FASHION_MNIST_FILES:
            _fetch_one(name, dest, base_url if download else None, source_dir, progress)
    except OSError as exc:  # network errors are FetchErrors by now; this is the local disk
        raise FetchError(f"cannot write Fashion-MNIST into {dest}: {exc}") from exc
    return dest


def check_base_url(base_url: str) -> None:
    """FetchError unless `base_url` is an http:// or https:// URL with a host: urllib would also
    read ftp:// and file:// URLs (a local file is what --source-dir is for), and fail on anything
    else with a bare "unknown url type". Worded for `fetch-data --base-url`."""
    try:
        parts = urllib.parse.urlsplit(base_url)
        usable = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError:  # "http://[::1" and the like
        usable = False
    if not usable:
        raise FetchError(
            f"--base-url {base_url}: not an http:// or https:// URL with a host; give the mirror's "
            "address, e.g. https://mirror.example/fashion-mnist/ (a local folder: --source-dir DIR)"
        )


def _check_source_dir(source_dir: Path | None, dest: Path) -> None:
    """FetchError unless `source_dir` is a folder holding every file `dest` still lacks.
    Worded for `fetch-data --source-dir`, whose folder is then the only source."""
    expected = ", ".join(FASHION_MNIST_FILES)
    if source_dir is None or not source_dir.is_dir():
        what = "is not a folder" if source_dir is not None and source_dir.exists() else "no such folder"
        raise FetchError(
            f"--source-dir {source_dir}: {what}; give the folder holding the Fashion-MNIST files "
            f"({expected}), such as {SYSTEM_COPY} from `apt-get install dataset-fashion-mnist`"
        )
    missing = [n for n in FASHION_MNIST_FILES if not (source_dir / n).is_file() and not (dest / n).is_file()]
    if missing:
        lacks = (
            "no Fashion-MNIST files in it"
            if len(missing) == len(FASHION_MNIST_FILES)
            else (f"it lacks {', '.join(missing)}")
        )
        raise FetchError(
            f"--source-dir {source_dir}: {lacks} (expected {expected}); nothing was downloaded; "
            "add the files, or also pass --base-url URL to download the missing ones"
        )


def _fetch_one(
    name: str, dest: Path, base_url: str | None, source_dir: Path | None, progress: Progress | None
) -> None:
    final = dest / name
    if final.is_file():
        if _content_ok(final, name, _sha256_file(final)):
            logger.info("%s: already present and verified, skipping", final)
            _report(progress, name, final.stat().st_size, final.stat().st_size)
            return
        logger.warning("%s: present but its checksum is wrong; fetching it again", final)
    local = None if source_dir is None else source_dir / name
    if local is not None and local.is_file():
        logger.info("copying %s", local)
        with local.open("rb") as src:
            _store(name, _read_chunks(src), local.stat().st_size, str(local), dest, progress)
        return
    if base_url is None:  # a file in dest that failed its checksum, and no copy in source_dir
        raise FetchError(
            f"--source-dir {source_dir}: no {name} in it to replace the corrupt {final}; "
            "nothing was downloaded"
        )
    url = f"{base_url.rstrip('/')}/{name}"
    logger.info("downloading %s", url)
    with _open_url(url) as response:
        _store(name, _url_chunks(response, url), _content_length(response), url, dest, progress)


def _store(
    name: str,
    chunks: Iterable[bytes],
    total: int,
    origin: str,
    dest: Path,
    progress: Progress | None,
) -> None:
    """Write chunks to a temporary file in dest, verify, and rename it to `name`."""
    fd, tmp_name = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, replacement_mode(dest / name))  # mkstemp makes it 0600; these are shared data
        digest, done = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                _report(progress, name, done, total)
            out.flush()
            os.fsync(out.fileno())  # the rename must not publish data still in the page cache
        actual = digest.hexdigest()
        if not _content_ok(tmp, name, actual):
            raise ChecksumError(
                f"{name} from {origin}: checksum mismatch: expected sha256 "
                f"{FASHION_MNIST_FILES[name]}, got {actual} (and the decompressed data does not "
                f"match {FASHION_MNIST_IDX_SHA256[name]} either); the copy is corrupt or not "
                "Fashion-MNIST; nothing was saved under that name"
            )
        os.replace(tmp, dest / name)
    finally:
        tmp.unlink(missing_ok=True)


def _content_ok(path: Path, name: str, raw_sha256: str) -> bool:
    """Upstream bytes, or a repacked gzip whose decompressed data is the upstream data."""
    if raw_sha256 == FASHION_MNIST_FILES[name]:
        return True
    try:
        with gzip.open(path, "rb") as stream:
            content = _sha256_stream(stream)
    except (OSError, EOFError, zlib.error):
        return False
    if content != FASHION_MNIST_IDX_SHA256[name]:
        return False
    logger.info("%s: repacked gzip (not upstream bytes); decompressed data verified", path)
    return True


def _open_url(url: str) -> http.client.HTTPResponse:
    try:
        return urllib.request.urlopen(url, timeout=_TIMEOUT_S)
    except (OSError, http.client.HTTPException) as exc:  # URLError and HTTPError are OSErrors
        raise FetchError(_network_message(url, exc)) from exc


def _url_chunks(response: BinaryIO, url: str) -> Iterator[bytes]:
    while True:
        try:
            chunk = response.read(_CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(_network_message(url, exc)) from exc
        if not chunk:
            return
        yield chunk


def _network_message(url: str, exc: BaseException) -> str:
    # Worded for `gradfleet fetch-data`, the caller a person sees: the flags, not the parameters.
    if SYSTEM_COPY.is_dir():
        # Only a --base-url given on the command line is not the default, and only then does
        # leaving it out make the CLI use the system copy.
        omit = " (or omit --base-url, which uses it)" if not url.startswith(DEFAULT_BASE_URL) else ""
        local = (
            f"a local copy is already in {SYSTEM_COPY}: pass `--source-dir {SYSTEM_COPY}`{omit} "
            "and the files are copied and verified"
        )
    else:
        local = (
            f"`apt-get install dataset-fashion-mnist` puts the files in {SYSTEM_COPY}; pass "
            f"`--source-dir {SYSTEM_COPY}` and they are copied and verified"
        )
    return f"cannot download {url}: {exc}. Without network access, use a local copy instead: {local}"


def _content_length(response: http.client.HTTPResponse) -> int:
    try:
        return int(response.headers.get("Content-Length", -1))
    except ValueError:
        return -1


def _read_chunks(stream: BinaryIO) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


def _sha256_file(path: Path) -> str:
    with path.open("rb") as stream:
        return _sha256_stream(stream)


def _sha256_stream(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    for chunk in _read_chunks(stream):
        digest.update(chunk)
    return digest.hexdigest()


def _report(progress: Progress | None, name: str, done: int, total: int) -> None:
    if progress is not None:
        progress(name, done, total)
