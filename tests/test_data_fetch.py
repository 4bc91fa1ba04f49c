"""Fetching Fashion-MNIST: real HTTP downloads on loopback, local copies, checksums, reruns."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import os
import shutil
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import cli
from service.datasets import load_dataset
from service.fetch import (
    FASHION_MNIST_FILES,
    FASHION_MNIST_IDX_SHA256,
    ChecksumError,
    FetchError,
    fetch_fashion_mnist,
)

# What upstream publishes, and the gzip mtimes that turn the Debian copies back into upstream's.
UPSTREAM_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
UPSTREAM_MTIME = {"train": 1504176606, "t10k": 1504176627}


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory and records every request path on the server."""

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args) -> None:  # keep test output clean
        pass


@contextlib.contextmanager
def serving(directory: Path) -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on 127.0.0.1 (port 0) for `directory`: (base URL, request log)."""
    handler = functools.partial(_CountingHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = []
    # A short poll interval so shutdown() returns quickly instead of after the default 0.5 s.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", server.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def upstream_bytes(debian_copy: Path) -> bytes:
    """The upstream .gz: Debian's deflate stream under the original header (FNAME, mtime)."""
    name = debian_copy.name
    mtime = UPSTREAM_MTIME[name.split("-")[0]]
    header = b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + b"\x00\x03"
    return header + name.removesuffix(".gz").encode() + b"\x00" + debian_copy.read_bytes()[10:]


@pytest.fixture(scope="module")
def downloaded(fashion_dir, tmp_path_factory) -> Iterator[tuple[Path, str, list, list]]:
    """One download of the system copy over HTTP: (dest, base URL, requests, progress calls)."""
    dest = tmp_path_factory.mktemp("fetched")
    calls: list[tuple[str, int, int]] = []
    with serving(fashion_dir) as (base_url, requests):
        fetch_fashion_mnist(dest, base_url, progress=lambda *call: calls.append(call))
        yield dest, base_url, requests, calls


def test_download_verifies_and_loads(downloaded, fashion_dir):
    """Downloaded files are byte-identical to the served ones and load as Fashion-MNIST."""
    dest, _, requests, _ = downloaded
    assert sorted(requests[:4]) == sorted(f"/{name}" for name in FASHION_MNIST_FILES)
    assert sorted(p.name for p in dest.iterdir()) == sorted(FASHION_MNIST_FILES)  # no .part
    for name in FASHION_MNIST_FILES:
        assert (dest / name).read_bytes() == (fashion_dir / name).read_bytes()
    dataset = load_dataset(f"idx:{dest.name}", dest.parent)
    assert dataset.x_train.shape == (60000, 784) and dataset.x_test.shape == (10000, 784)
    assert dataset.num_classes == 10


def test_download_reports_progress_up_to_the_file_size(downloaded, fashion_dir):
    """Progress rises monotonically per file and ends at done == total == file size."""
    _, _, _, calls = downloaded
    for name in FASHION_MNIST_FILES:
        done = [d for n, d, _ in calls if n == name]
        size = (fashion_dir / name).stat().st_size
        assert done == sorted(done) and done[-1] == size
        assert {t for n, _, t in calls if n == name} == {size}
    assert len([c for c in calls if c[0] == "train-images-idx3-ubyte.gz"]) == 26  # 1 MiB chunks


def test_second_fetch_is_skipped_without_requests(downloaded):
    """Running fetch again on a complete, verified directory makes no HTTP requests."""
    dest, base_url, requests, _ = downloaded
    before = len(requests)
    calls: list[tuple[str, int, int]] = []
    assert fetch_fashion_mnist(dest, base_url, progress=lambda *c: calls.append(c)) == dest
    assert len(requests) == before
    assert [(name, done == total) for name, done, total in calls] == [
        (name, True) for name in FASHION_MNIST_FILES
    ]


def test_corrupted_download_fails_and_leaves_no_file(fashion_dir, tmp_path):
    """A file with one flipped byte fails with its name and both digests; nothing is kept."""
    served = tmp_path / "served"
    served.mkdir()
    name = "train-images-idx3-ubyte.gz"
    data = bytearray((fashion_dir / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (served / name).write_bytes(data)
    dest = tmp_path / "dest"
    with serving(served) as (base_url, requests), pytest.raises(ChecksumError) as caught:
        fetch_fashion_mnist(dest, base_url)
    message = str(caught.value)
    assert name in message and base_url in message
    assert FASHION_MNIST_FILES[name] in message
    assert hashlib.sha256(data).hexdigest() in message
    assert requests == [f"/{name}"]
    assert list(dest.iterdir()) == []


def test_local_copy_is_used_instead_of_the_network(fashion_dir, tmp_path):
    """With source_dir holding the files they are copied and verified, with no HTTP request."""
    (tmp_path / "empty").mkdir()
    with serving(tmp_path / "empty") as (base_url, requests):
        dest = fetch_fashion_mnist(tmp_path / "dest", base_url, source_dir=fashion_dir)
    assert requests == []
    assert sorted(p.name for p in dest.iterdir()) == sorted(FASHION_MNIST_FILES)
    assert (dest / "t10k-labels-idx1-ubyte.gz").read_bytes() == (
        fashion_dir / "t10k-labels-idx1-ubyte.gz"
    ).read_bytes()


def test_a_wrong_existing_file_is_replaced(fashion_dir, tmp_path):
    """A file already in dest with the wrong content is fetched again and replaced."""
    dest = tmp_path / "dest"
    shutil.copytree(fashion_dir, dest)
    (dest / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not the labels"))
    with serving(fashion_dir) as (base_url, requests):
        fetch_fashion_mnist(dest, base_url)
    assert requests == ["/train-labels-idx1-ubyte.gz"]
    assert load_dataset(f"idx:{dest}", tmp_path).y_train.shape == (60000,)


def test_network_error_names_url_and_suggests_a_local_copy(tmp_path):
    """A refused connection is a FetchError naming the URL and the local-copy alternative."""
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(FetchError) as caught:
        fetch_fashion_mnist(tmp_path, f"http://127.0.0.1:{port}", source_dir=tmp_path / "none")
    message = str(caught.value)
    assert f"http://127.0.0.1:{port}/train-images-idx3-ubyte.gz" in message
    assert "--source-dir" in message and "source_dir" not in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("system_copy", [True, False], ids=["system-copy", "no-system-copy"])
def test_a_bad_mirror_advises_the_cli_flag(system_copy, fashion_dir, tmp_path, capsys, monkeypatch):
    """`fetch-data --base-url` on a mirror without the files names `--source-dir` (not the Python
    parameter): the system copy when there is one, else the package that installs it."""
    from service import cli, fetch

    copy = fashion_dir if system_copy else tmp_path / "no-such-copy"
    monkeypatch.setattr(fetch, "SYSTEM_COPY", copy)
    (tmp_path / "empty").mkdir()
    with serving(tmp_path / "empty") as (base_url, _):
        assert cli.main(["fetch-data", "--dest", str(tmp_path / "d"), "--base-url", f"{base_url}bad/"]) == 2
    err = capsys.readouterr().err
    assert "404" in err and f"--source-dir {copy}" in err and "source_dir" not in err
    assert ("apt-get install" in err) is not system_copy
    assert ("omit --base-url" in err) is system_copy


def test_http_404_is_a_fetch_error(tmp_path):
    """A server without the files gives a FetchError with the HTTP status."""
    (tmp_path / "empty").mkdir()
    with serving(tmp_path / "empty") as (base_url, _), pytest.raises(FetchError, match="404"):
        fetch_fashion_mnist(tmp_path / "dest", base_url)


def test_recorded_digests_are_upstreams(fashion_dir):
    """Debian's copies with the upstream gzip header restored match upstream's published md5s."""
    for name, md5 in UPSTREAM_MD5.items():
        data = upstream_bytes(fashion_dir / name)
        assert hashlib.md5(data).hexdigest() == md5, name
        assert hashlib.sha256(data).hexdigest() == FASHION_MNIST_FILES[name], name
        content = hashlib.sha256(gzip.decompress(data)).hexdigest()
        assert content == FASHION_MNIST_IDX_SHA256[name], name


def test_upstream_bytes_are_accepted_as_they_are(fashion_dir, tmp_path):
    """Files byte-identical to upstream's download and verify by their .gz sha256."""
    served = tmp_path / "served"
    served.mkdir()
    for name in FASHION_MNIST_FILES:
        (served / name).write_bytes(upstream_bytes(fashion_dir / name))
    with serving(served) as (base_url, _):
        dest = fetch_fashion_mnist(tmp_path / "dest", base_url)
    for name in FASHION_MNIST_FILES:
        digest = hashlib.sha256((dest / name).read_bytes()).hexdigest()
        assert digest == FASHION_MNIST_FILES[name]


def test_unwritable_destination_is_a_fetch_error(fashion_dir, tmp_path):
    """A destination that is an existing file gives a FetchError naming it."""
    (tmp_path / "taken").write_text("a file, not a directory")
    with pytest.raises(FetchError, match=r"cannot write Fashion-MNIST into .*taken"):
        fetch_fashion_mnist(tmp_path / "taken", source_dir=fashion_dir)


def test_an_explicit_base_url_is_downloaded_from_even_with_a_system_copy(fashion_dir, tmp_path, capsys):
    """`fetch-data --base-url URL` fetches from URL (the system copy only stands in for the default),
    so an unreachable mirror is an error, and a working one is asked for every file."""
    from service import cli

    assert cli.main(["fetch-data", "--dest", str(tmp_path / "a"), "--base-url", "http://127.0.0.1:9/"]) == 2
    assert "http://127.0.0.1:9/" in capsys.readouterr().err
    with serving(fashion_dir) as (base_url, requests):
        assert cli.main(["fetch-data", "--dest", str(tmp_path / "b"), "--base-url", base_url]) == 0
    assert sorted(requests) == sorted(f"/{name}" for name in FASHION_MNIST_FILES)


@pytest.mark.parametrize("state", ["missing", "empty", "partial"])
def test_a_source_dir_lacking_the_files_is_an_error_not_a_download(
    state, fashion_dir, tmp_path, capsys, monkeypatch
):
    """`fetch-data --source-dir DIR` with DIR missing, empty or lacking a file exits 2 naming DIR and
    the files expected; the official mirror (here a real local one holding the files) is never asked."""
    from service import cli, fetch

    source = tmp_path / "source"
    if state != "missing":
        source.mkdir()
    if state == "partial":
        shutil.copy(fashion_dir / "train-images-idx3-ubyte.gz", source)
    with serving(fashion_dir) as (mirror, requests):
        monkeypatch.setattr(fetch, "DEFAULT_BASE_URL", mirror)
        code = cli.main(["fetch-data", "--dest", str(tmp_path / "d"), "--source-dir", str(source)])
    err = capsys.readouterr().err
    assert (code, requests) == (2, []), err
    assert f"--source-dir {source}: " in err and "t10k-labels-idx1-ubyte.gz" in err
    assert ("no such folder" in err) is (state == "missing")
    assert ("no Fashion-MNIST files in it" in err) is (state == "empty")
    lacks = "it lacks train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"
    assert (lacks in err) is (state == "partial")
    assert not (tmp_path / "d").exists() or list((tmp_path / "d").iterdir()) == []


def test_a_source_dir_with_a_base_url_downloads_only_what_it_lacks(fashion_dir, tmp_path):
    """--source-dir and --base-url together: the folder's files are copied, the rest downloaded."""
    from service import cli

    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(fashion_dir / "train-images-idx3-ubyte.gz", source)
    with serving(fashion_dir) as (mirror, requests):
        args = [
            "fetch-data",
            "--dest",
            str(tmp_path / "d"),
            "--source-dir",
            str(source),
            "--base-url",
            mirror,
        ]
        assert cli.main(args) == 0
    assert sorted(requests) == sorted(
        f"/{name}" for name in FASHION_MNIST_FILES if not name.startswith("train-im")
    )


def test_a_failed_default_download_does_not_mention_a_base_url_never_given(
    fashion_dir, tmp_path, capsys, monkeypatch
):
    """A partial system copy falls back to the official mirror; when that fails, the advice names
    --source-dir but not "omit --base-url", since no --base-url was given."""
    from service import cli, fetch

    partial = tmp_path / "system"
    partial.mkdir()
    shutil.copy(fashion_dir / "train-labels-idx1-ubyte.gz", partial)
    monkeypatch.setattr(fetch, "SYSTEM_COPY", partial)
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(fetch, "DEFAULT_BASE_URL", f"http://127.0.0.1:{port}/")
    assert cli.main(["fetch-data", "--dest", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert f"cannot download http://127.0.0.1:{port}/train-images-idx3-ubyte.gz" in err
    assert f"--source-dir {partial}" in err and "--base-url" not in err


@pytest.mark.parametrize(
    "base_url", ["notaurl", "ftp://mirror.example/", "file:///etc/", "http://", "http://[::1"]
)
def test_only_http_and_https_mirrors_are_accepted(tmp_path, capsys, base_url):
    """--base-url takes http:// and https:// URLs with a host only: anything else (urllib reads
    ftp:// and file:// too) is a one-line error naming the flag, exit 2, before anything is written."""
    dest = tmp_path / "dest"
    assert cli.main(["fetch-data", "--dest", str(dest), "--base-url", base_url]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: --base-url {base_url}: not an http:// or https:// URL with a host; give the mirror's "
        "address, e.g. https://mirror.example/fashion-mnist/ (a local folder: --source-dir DIR)\n"
    )
    assert not dest.exists()
    with pytest.raises(FetchError, match="not an http:// or https:// URL"):
        fetch_fashion_mnist(dest, base_url)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_fetched_files_get_the_umask_s_mode(fashion_dir, tmp_path, umask, mode):
    """The four files are plain shared data: 0666 less the umask, not mkstemp's 0600."""
    previous = os.umask(umask)
    try:
        fetch_fashion_mnist(tmp_path, source_dir=fashion_dir, download=False)
    finally:
        os.umask(previous)
    assert {name: (tmp_path / name).stat().st_mode & 0o777 for name in FASHION_MNIST_FILES} == dict.fromkeys(
        FASHION_MNIST_FILES, mode
    )
