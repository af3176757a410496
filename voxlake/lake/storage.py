"""Where bytes live: local paths and fsspec URLs, for sources and for lakes.

Credentials and endpoints come from the environment, read here once per call site, the same way
for fsspec (sources, staged Parquet) and for delta-rs (commits): ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``/``AWS_DEFAULT_REGION``.
"""

from __future__ import annotations

import os
from typing import Any

#: Environment variables that configure object stores (credentials, endpoints, regions).
_ENV_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_")


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URLs."""
    return "://" not in uri or uri.startswith("file://")


def normalize(uri: str) -> str:
    """Local paths become absolute paths (the form stored in ``uri`` columns); URLs stay as given."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        return uri.rstrip("/") if uri.count("/") > 3 else uri
    return os.path.abspath(os.path.expanduser(uri))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def filesystem(uri: str) -> Any:
    """The fsspec filesystem for a URI (the local one for paths)."""
    import fsspec

    if is_local(uri):
        return fsspec.filesystem("file")
    protocol = uri.split("://", 1)[0]
    if protocol in ("s3", "s3a"):
        _require("s3fs", "s3")
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict[str, Any] = {}
        if endpoint:
            kwargs["endpoint_url"] = endpoint
        return fsspec.filesystem("s3", **kwargs)
    return fsspec.filesystem(protocol)


def arrow_filesystem(uri: str) -> Any:
    """A pyarrow filesystem for reading the lake's Parquet files: the native S3 one for s3:// (its
    I/O threads never call back into Python), fsspec's through pyarrow's handler otherwise.

    Why: DuckDB 2.0 starts a scan of a pyarrow dataset while holding the GIL, and a dataset over a
    Python filesystem reads in threads that need the GIL: a query over an object-store lake could
    hang (seen once in CI)."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    protocol = uri.split("://", 1)[0]
    if protocol in ("s3", "s3a"):
        from urllib.parse import urlparse

        from pyarrow.fs import S3FileSystem

        kwargs: dict[str, Any] = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            parsed = urlparse(endpoint)
            kwargs["endpoint_override"] = parsed.netloc or parsed.path
            kwargs["scheme"] = parsed.scheme or "https"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not region and not endpoint:
            # s3fs finds a bucket's region by itself; pyarrow's filesystem must be told it
            from pyarrow.fs import resolve_s3_region

            try:
                region = resolve_s3_region(uri.split("://", 1)[1].split("/", 1)[0])
            except OSError:
                region = None  # unreachable now: the read reports it
        if region:
            kwargs["region"] = region
        return S3FileSystem(**kwargs)  # credentials: the AWS SDK's chain (environment first)
    return PyFileSystem(FSSpecHandler(filesystem(uri)))


def delta_storage_options(uri: str) -> dict[str, str]:
    """Options for delta-rs. For S3 without a DynamoDB lock, commits use delta-rs's
    unsafe-rename mode unless ``AWS_S3_LOCKING_PROVIDER`` or conditional put is configured:
    one writer at a time per lake, which is how ``voxlake ingest`` runs."""
    if is_local(uri):
        return {}
    opts: dict[str, str] = {}
    if uri.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["AWS_ENDPOINT_URL"] = endpoint
            if endpoint.startswith("http://"):
                opts["AWS_ALLOW_HTTP"] = "true"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            opts["AWS_REGION"] = region
        if not (
            os.environ.get("AWS_S3_LOCKING_PROVIDER") or os.environ.get("AWS_CONDITIONAL_PUT")
        ):
            opts["AWS_S3_ALLOW_UNSAFE_RENAME"] = "true"
    return opts


def environment() -> dict[str, str]:
    """This process's object-store variables, for worker processes: a forkserver's children get
    the environment the forkserver started with, not the one the driver has now."""
    return {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}


def apply_environment(env: dict[str, str]) -> None:
    """Make this process's object-store variables exactly ``env`` (a worker's initializer)."""
    for key in [k for k in os.environ if k.startswith(_ENV_PREFIXES) and k not in env]:
        del os.environ[key]
    os.environ.update(env)


def _require(module: str, extra: str) -> None:
    import importlib.util

    from voxlake.errors import MissingExtraError

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(f"{module} is needed for this URL: pip install 'voxlake[{extra}]'")
