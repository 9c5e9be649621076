"""Destinations by URL scheme (sinks/__init__.py) and s3:// in the task settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataferry._exceptions import ConfigError
from dataferry._settings import TASK_KEYS, resolve_task
from dataferry.sinks import destination_scheme, sink_factory_for, sink_url
from dataferry.sinks.local import LocalSink
from dataferry.sinks.s3 import S3Sink, parse_url, url_of


@pytest.mark.parametrize(
    ("save", "url", "folder"),
    [
        ("s3://data-lake/landing/", "s3://data-lake/landing/", True),
        ("s3://data-lake/landing/jan.csv", "s3://data-lake/landing/jan.csv", False),
        ("s3://data-lake", "s3://data-lake", False),
        ("./data/x.csv", None, False),
        ("/abs/dir/", None, True),
    ],
)
def test_file_save_path_may_be_an_s3_url(save: str, url: str | None, folder: bool) -> None:
    task = resolve_task("t", None, {"file_save_path": save, "remote_file_path": "/r"})
    assert task.destination_url == url
    assert task.save_path_is_folder is folder
    if url is not None:
        # The engine holds it as a path; the registry turns it back into the URL.
        assert sink_url(url, task.file_save_path) == url.rstrip("/")
        assert sink_factory_for(url) is S3Sink
    else:
        assert sink_factory_for(url) is LocalSink


@pytest.mark.parametrize(
    ("save", "message"),
    [
        ("gs://bucket/x", "gs:// destinations are not supported (supported: s3://)"),
        ("s3://ab/x", "bucket name of 3-63 lowercase letters"),
        ("s3://Upper/x", "bucket name of 3-63 lowercase letters"),
        ("s3://bucket/a/../b", "'.' and '..' are not allowed"),
    ],
)
def test_bad_urls_are_config_errors(save: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_task("t", None, {"file_save_path": save, "remote_file_path": "/r"})
    assert str(caught.value).startswith("--file_save_path: ")
    assert message in str(caught.value)
    assert caught.value.exit_code == 2


def test_destination_url_is_not_a_key_users_set() -> None:
    assert "destination_url" not in TASK_KEYS
    task = resolve_task(
        "t", None, {"file_save_path": "/x", "remote_file_path": "/r", "destination_url": "s3://a/b"}
    )
    assert task.destination_url is None  # derived from file_save_path alone


def test_scheme_and_url_parsing() -> None:
    assert destination_scheme("/plain/path") is None
    assert destination_scheme("S3://b/k") == "s3"
    assert parse_url("s3://bucket/a//b/./c") == ("bucket", "a/b/c")
    assert parse_url(str(Path("s3://bucket/p/q"))) == ("bucket", "p/q")
    assert url_of(Path("s3://bucket")) == "s3://bucket"
    sink = S3Sink("s3://bucket/pre/fix/")
    assert sink.key("sub/a.csv") == "pre/fix/sub/a.csv"
    assert sink.describe("sub/a.csv") == "s3://bucket/pre/fix/sub/a.csv"
    assert sink.describe() == "s3://bucket/pre/fix"
    assert S3Sink("s3://bucket").key("a.csv") == "a.csv"
