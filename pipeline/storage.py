"""Local folders and ``s3://bucket/prefix`` behind the same few functions, for preprocessing
(clips in, shards out), training (shards in, checkpoints out) and evaluation.

S3 settings come from the usual environment variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION``), captured once on the driver as :class:`S3Options` and handed to Ray
workers explicitly, so workers on other machines or started before the variables were set use the
same endpoint. Unset values fall back to boto3's own chain (instance roles, ~/.aws).

    urls = shard_urls("s3://bucket/data/train")        # sorted .tar URLs of a split (list_urls: may be empty)
    with open_binary(urls[0]) as fh: ...                # a read stream, closed afterwards
    register_webdataset_s3()                            # webdataset.WebDataset(urls) reads s3:// too
    with open_write("s3://bucket/run/ckpt.pt") as fh:   # local: atomic rename; S3: upload on close
        torch.save(state, fh)
    fs, path = pyarrow_filesystem("s3://bucket/runs")   # for Ray Train's storage_filesystem

boto3 and pyarrow are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

S3_PREFIX = "s3://"


class StorageError(OSError):
    """A read, write or listing that failed; the message names the URL."""


# ----------------------------------------------------------------------------- URLs


def is_s3(url: str) -> bool:
    return str(url).startswith(S3_PREFIX)


def parse_s3(url: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → (``bucket``, ``some/key``)."""
    if not is_s3(url):
        raise ValueError(f"not an s3:// URL: {url!r}")
    rest = url[len(S3_PREFIX):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"s3 URL without a bucket: {url!r}")
    return bucket, key


def local_path(url: str) -> Path:
    return Path(url[len("file://"):] if str(url).startswith("file://") else url)


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URL (always with ``/`` for S3)."""
    if is_s3(base):
        out = base.rstrip("/")
        for p in parts:
            out = f"{out}/{str(p).strip('/')}"
        return out
    return str(local_path(base).joinpath(*parts))


def basename(url: str) -> str:
    return str(url).rstrip("/").rsplit("/", 1)[-1]


def parent(url: str) -> str:
    if is_s3(url):
        return url.rstrip("/").rsplit("/", 1)[0]
    return str(local_path(url).parent)


# ----------------------------------------------------------------------------- S3 client


@dataclass(frozen=True)
class S3Options:
    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> S3Options:
        env = os.environ if environ is None else environ
        return cls(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
        )


@functools.lru_cache(maxsize=8)
def _client(options: S3Options) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=options.access_key, aws_secret_access_key=options.secret_key,
        aws_session_token=options.session_token, region_name=options.region or "us-east-1",
    )
    return session.client("s3", endpoint_url=options.endpoint_url,
                          config=Config(retries={"max_attempts": 5, "mode": "standard"}))


def s3_client(options: S3Options | None = None) -> Any:
    """A cached boto3 S3 client for these options (environment when None)."""
    return _client(options or S3Options.from_env())


def _s3_error(url: str, exc: Exception) -> StorageError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "") if hasattr(exc, "response") else ""
    detail = f"{code}: {exc}" if code else str(exc)
    return StorageError(f"cannot access {url} ({detail})")


# ----------------------------------------------------------------------------- operations


def exists(url: str, options: S3Options | None = None) -> bool:
    if not is_s3(url):
        return local_path(url).exists()
    bucket, key = parse_s3(url)
    try:
        s3_client(options).head_object(Bucket=bucket, Key=key)
        return True
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _s3_error(url, exc) from exc


def list_files(url: str, suffixes: Sequence[str] | None = None, recursive: bool = True,
               options: S3Options | None = None) -> list[str]:
    """Files under a folder/prefix (sorted full URLs or paths), optionally filtered by suffix
    (case-insensitive)."""
    suffixes = tuple(s.lower() for s in suffixes) if suffixes else None
    keep = lambda name: suffixes is None or name.lower().endswith(suffixes)
    if not is_s3(url):
        root = local_path(url)
        if not root.is_dir():
            return []
        files = root.rglob("*") if recursive else root.iterdir()
        return sorted(str(p) for p in files if p.is_file() and keep(p.name))
    bucket, prefix = parse_s3(url.rstrip("/") + "/")
    out = []
    kwargs = {"Bucket": bucket, "Prefix": prefix}
    if not recursive:
        kwargs["Delimiter"] = "/"
    try:
        for page in s3_client(options).get_paginator("list_objects_v2").paginate(**kwargs):
            # keys ending in "/" are folder markers (pyarrow writes them), not files
            out += [f"{S3_PREFIX}{bucket}/{o['Key']}" for o in page.get("Contents", [])
                    if keep(o["Key"]) and not o["Key"].endswith("/")]
    except Exception as exc:
        raise _s3_error(url, exc) from exc
    return sorted(out)


def list_dirs(url: str, options: S3Options | None = None) -> list[str]:
    """Immediate sub-folders (sorted), for layouts of one folder per clip."""
    if not is_s3(url):
        root = local_path(url)
        return sorted(str(p) for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    bucket, prefix = parse_s3(url.rstrip("/") + "/")
    out = []
    try:
        for page in s3_client(options).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            out += [f"{S3_PREFIX}{bucket}/{p['Prefix'].rstrip('/')}" for p in page.get("CommonPrefixes", [])]
    except Exception as exc:
        raise _s3_error(url, exc) from exc
    return sorted(out)


def read_bytes(url: str, options: S3Options | None = None) -> bytes:
    if not is_s3(url):
        try:
            return local_path(url).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {url} ({exc.strerror or exc})") from exc
    bucket, key = parse_s3(url)
    try:
        return s3_client(options).get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        raise _s3_error(url, exc) from exc


def read_text(url: str, options: S3Options | None = None) -> str:
    return read_bytes(url, options).decode()


def write_bytes(url: str, data: bytes, options: S3Options | None = None) -> None:
    """Write a whole object; local files appear atomically (written aside, then renamed)."""
    with open_write(url, options) as fh:
        fh.write(data)


def write_text(url: str, text: str, options: S3Options | None = None) -> None:
    write_bytes(url, text.encode(), options)


@contextlib.contextmanager
def open_write(url: str, options: S3Options | None = None) -> Iterator[BinaryIO]:
    """A binary file to write; the object exists only after a clean exit (local: temp file +
    rename; S3: spooled to memory/disk, then uploaded, multipart when large)."""
    if not is_s3(url):
        path = local_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return
    bucket, key = parse_s3(url)
    with tempfile.SpooledTemporaryFile(max_size=64 << 20) as spool:
        yield spool  # type: ignore[misc]
        spool.seek(0)
        try:
            s3_client(options).upload_fileobj(spool, bucket, key)
        except Exception as exc:
            raise _s3_error(url, exc) from exc


def open_read(url: str, options: S3Options | None = None) -> BinaryIO:
    """A binary stream to read (S3: streamed, not buffered whole)."""
    if not is_s3(url):
        try:
            return local_path(url).open("rb")
        except OSError as exc:
            raise StorageError(f"cannot read {url} ({exc.strerror or exc})") from exc
    bucket, key = parse_s3(url)
    try:
        return s3_client(options).get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as exc:
        raise _s3_error(url, exc) from exc


def remove(url: str, options: S3Options | None = None) -> None:
    """Delete one file/object (missing is fine)."""
    if not is_s3(url):
        with contextlib.suppress(FileNotFoundError):
            local_path(url).unlink()
        return
    bucket, key = parse_s3(url)
    try:
        s3_client(options).delete_object(Bucket=bucket, Key=key)
    except Exception as exc:
        raise _s3_error(url, exc) from exc


def sha256(url: str, options: S3Options | None = None) -> str:
    digest = hashlib.sha256()
    with contextlib.closing(open_read(url, options)) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def open_binary(url: str, options: S3Options | None = None) -> Iterator[BinaryIO]:
    """``with open_binary(url) as fh:`` a read stream that is closed afterwards."""
    fh = open_read(url, options)
    try:
        yield fh
    finally:
        fh.close()


def list_urls(prefix: str, suffix: str | Sequence[str] | None = None, options: S3Options | None = None) -> list[str]:
    """Files directly under a folder/prefix with this suffix, sorted; a prefix that is itself such
    a file gives just itself. (The training data reader's entry point.)"""
    suffixes = (suffix,) if isinstance(suffix, str) else suffix
    if suffixes and str(prefix).lower().endswith(tuple(s.lower() for s in suffixes)) and exists(prefix, options):
        return [str(prefix)]
    return list_files(prefix, suffixes=suffixes, recursive=False, options=options)


def shard_urls(prefix: str, options: S3Options | None = None) -> list[str]:
    """The WebDataset shards (``*.tar``) directly under a split folder/prefix, sorted by name.
    Raises StorageError when there are none (a wrong path should not train on nothing)."""
    urls = list_files(prefix, suffixes=(".tar",), recursive=False, options=options)
    if not urls:
        raise StorageError(f"no .tar shards under {prefix}")
    return urls


# ----------------------------------------------------------------------------- adapters


def pyarrow_filesystem(url: str, options: S3Options | None = None) -> tuple[Any, str]:
    """(pyarrow FileSystem, path inside it) for a local path or an s3:// URL; for Ray Data
    ``filesystem=`` and Ray Train ``RunConfig(storage_filesystem=...)``."""
    import pyarrow.fs as pafs

    if not is_s3(url):
        return pafs.LocalFileSystem(), str(local_path(url).resolve())
    options = options or S3Options.from_env()
    kwargs: dict[str, Any] = {"region": options.region or "us-east-1"}
    if options.endpoint_url:
        parsed = urlparse(options.endpoint_url)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    if options.access_key:
        kwargs.update(access_key=options.access_key, secret_key=options.secret_key, session_token=options.session_token)
    bucket, key = parse_s3(url)
    return pafs.S3FileSystem(**kwargs), f"{bucket}/{key}".rstrip("/")


def ray_storage(url: str, options: S3Options | None = None) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray Train's RunConfig: a local absolute path and
    None, or the ``bucket/prefix`` path inside a pyarrow S3FileSystem built from the options."""
    if not is_s3(url):
        return str(local_path(url).resolve()), None
    fs, path = pyarrow_filesystem(url, options)
    return path, fs


class _UploadOnClose(io.BytesIO):
    def __init__(self, url: str, options: S3Options | None) -> None:
        super().__init__()
        self._url, self._options = url, options

    def close(self) -> None:
        if not self.closed:
            write_bytes(self._url, self.getvalue(), self._options)
        super().close()


def register_webdataset_s3(options: S3Options | None = None) -> None:
    """Let webdataset open ``s3://`` URLs through boto3 (it has no handler of its own):
    ``webdataset.WebDataset(shard_urls("s3://bucket/data/train"))``. Idempotent; call it in every
    process that reads (e.g. inside each training worker)."""
    from webdataset.gopen import gopen_schemes  # (``webdataset.gopen`` the attribute is a function)

    captured = options or S3Options.from_env()

    def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> BinaryIO:
        if mode.startswith("r"):
            return open_read(url, captured)
        if mode.startswith("w"):
            return _UploadOnClose(url, captured)
        raise ValueError(f"{url}: mode {mode!r} not supported")

    gopen_schemes["s3"] = gopen_s3
