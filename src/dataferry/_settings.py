"""Task settings: config.json + command-line overrides, validated.

The connection's settings (environment and .env) are in _connection.py.

Precedence for task settings: command-line flag > task section > ``common`` >
built-in default. Every bad value becomes a one-line :class:`ConfigError` that
names where the value came from (``config.json: task_2.max_tries: ...`` or
``--max_tries: ...``).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ._defaults import LOG_LEVELS
from ._exceptions import ConfigError

DEFAULT_INCLUDE = ("*.csv", "*.zip")
# Set in the container images: saving outside the mounted data folder would
# silently lose the data when the container exits.
DATA_DIR_ENV = "DATAFERRY_DATA_DIR"

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def parse_bool(value: object) -> object:
    """Accept JSON booleans and the strings the seed wrote ("True"/"False")."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise ValueError("expected true or false")


def _parse_log_level(value: object) -> object:
    if isinstance(value, str) and value.strip().upper() in LOG_LEVELS:
        return value.strip().upper()
    raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")


def _parse_size(value: object) -> object:
    from .plan.filters import parse_size

    return parse_size(value)


def _parse_duration(value: object) -> object:
    from .plan.filters import parse_duration

    return parse_duration(value)


def _parse_marker(value: object) -> object:
    from .plan.filters import parse_marker

    return parse_marker(value)


def _parse_after_fetch(value: object) -> object:
    from .plan.filters import parse_after_fetch

    return parse_after_fetch(value)


Bool = Annotated[bool, BeforeValidator(parse_bool)]
LogLevel = Annotated[str, BeforeValidator(_parse_log_level)]


class TaskSettings(BaseModel):
    """One task, fully resolved. Field names are the config.json keys."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    name: str
    file_save_path: Path
    remote_file_path: str
    keep_zip_tar_file: Bool = False
    max_tries: int = Field(default=3, ge=1, le=1000)
    # Seconds a server may leave one request unanswered before the try fails.
    request_timeout: float = Field(default=60.0, gt=0, le=3600)
    retry_delay: float = Field(default=2.0, ge=0, le=3600)
    log_level: LogLevel = Field(default="INFO", alias="log-level")
    overwrite: Bool = False
    include: tuple[str, ...] = DEFAULT_INCLUDE
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Where the metrics endpoint listens: loopback unless asked (it has no authentication).
    metrics_host: str = "127.0.0.1"
    verify: Literal["size", "sha256"] = "size"
    force: Bool = False
    # Decompression-bomb caps: total bytes an archive may unpack to, and the
    # largest uncompressed/compressed ratio (real CSV stays well under 20).
    max_extract_bytes: int = Field(default=64 * 2**30, ge=1)
    max_compression_ratio: float = Field(default=1000.0, gt=1)
    # The manifest recording what each task fetched (docs/manifest.md); resolved
    # by resolve_task when not set: DATAFERRY_MANIFEST, else beside the config file.
    manifest: Path | None = None
    # Refuse to run when the remote differs from what the manifest pins.
    frozen: Bool = False
    # Extract archives (false: keep them as downloaded; `dataferry get --no-extract`).
    extract: Bool = True
    # Whole trees and drop folders (docs/trees.md; parsed by plan/filters.py).
    recursive: Bool = False
    exclude: tuple[str, ...] = ()
    min_size: Annotated[int, BeforeValidator(_parse_size)] | None = None
    max_size: Annotated[int, BeforeValidator(_parse_size)] | None = None
    newer_than: str | None = None  # a date, or a duration before the run
    max_age: Annotated[float, BeforeValidator(_parse_duration)] | None = None
    min_age: Annotated[float, BeforeValidator(_parse_duration)] | None = None
    stable_for: Annotated[float, BeforeValidator(_parse_duration)] | None = None
    ready_marker: Annotated[str, BeforeValidator(_parse_marker)] | None = None
    # keep | delete | move:/remote/folder, once a file is safe here (engine/after_fetch.py).
    after_fetch: Annotated[str, BeforeValidator(_parse_after_fetch)] = "keep"
    # SSH connections per task: a big file is fetched in that many segments at
    # once, each over its own connection (engine/segments.py, docs/scale.md).
    connections: int = Field(default=1, ge=1, le=32)
    # Derived, not a key: file_save_path was written with a trailing "/" (a folder).
    save_path_is_folder: bool = Field(default=False, exclude=True)
    # Derived, not a key: file_save_path as written when it is a URL (s3://bucket/prefix);
    # file_save_path then holds the same as a path (sinks.sink_url turns it back).
    destination_url: str | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _remember_destination_url(cls, data: object) -> object:
        if isinstance(data, dict):
            raw = data.get("file_save_path")
            url = None
            if isinstance(raw, str):
                try:
                    url = _destination_url(raw)
                except ValueError:
                    url = None  # _save_url_is_usable says why, as file_save_path's error
            data = {**data, "destination_url": url}
        return data

    @field_validator("file_save_path", mode="before")
    @classmethod
    def _save_url_is_usable(cls, value: object) -> object:
        if isinstance(value, str):
            _destination_url(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _glob_in_remote_path(cls, data: object) -> object:
        # "/data/2024-*.csv.zip": the folder, with the pattern as its include.
        if isinstance(data, dict) and isinstance(data.get("remote_file_path"), str):
            folder, pattern = split_remote_glob(data["remote_file_path"])
            if pattern is not None:
                if "include" in data:
                    raise ValueError(
                        f"remote_file_path {data['remote_file_path']} is a glob already: "
                        "leave out include"
                    )
                data = {**data, "remote_file_path": folder, "include": [pattern]}
        return data

    @model_validator(mode="before")
    @classmethod
    def _remember_trailing_slash(cls, data: object) -> object:
        if isinstance(data, dict):
            raw = data.get("file_save_path")
            if isinstance(raw, str | Path):
                text = str(raw) if isinstance(raw, Path) else raw
                data = {**data, "save_path_is_folder": text.endswith(("/", os.sep))}
        return data

    @field_validator("remote_file_path")
    @classmethod
    def _remote_path_is_usable(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return str(PurePosixPath(value))

    @field_validator("file_save_path")
    @classmethod
    def _save_path_is_usable(cls, value: Path) -> Path:
        if not str(value).strip():
            raise ValueError("must not be empty")
        return value.expanduser()  # "~/data" means the home folder, as in a shell

    @field_validator("manifest")
    @classmethod
    def _manifest_path(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    @field_validator("include", mode="before")
    @classmethod
    def _include_is_list_of_globs(cls, value: object) -> object:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not value:
            raise ValueError("expected a non-empty list of glob patterns")
        if not all(isinstance(item, str) and item for item in value):
            raise ValueError("expected a non-empty list of glob patterns")
        return tuple(value)

    @field_validator("verify", mode="before")
    @classmethod
    def _verify_in_any_case(cls, value: object) -> object:
        # "--verify SHA256" like "--log-level debug".
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("max_extract_bytes", mode="before")
    @classmethod
    def _size_with_unit(cls, value: object) -> object:
        # "64G" as `demo --size 50M` takes it (observe/units.py: one size convention).
        if isinstance(value, str):
            from .observe.units import parse_size

            return parse_size(value)
        return value

    @field_validator("exclude", mode="before")
    @classmethod
    def _exclude_is_list_of_globs(cls, value: object) -> object:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(
            isinstance(item, str) and item for item in value
        ):
            raise ValueError("expected a list of glob patterns")
        return tuple(value)

    @field_validator("newer_than")
    @classmethod
    def _newer_than_is_a_moment(cls, value: str | None) -> str | None:
        if value is not None:
            from .plan.filters import parse_time_bound

            parse_time_bound(value)
        return value


_GLOB = re.compile(r"[*?\[]")


def split_remote_glob(remote: str) -> tuple[str, str | None]:
    """A remote path whose last part is a glob: (its folder, the pattern); else
    (remote, None). ValueError when a folder part is a glob (not supported)."""
    pure = PurePosixPath(remote)
    if _GLOB.search(str(pure.parent)):
        raise ValueError(f"{remote}: only the last part may be a glob (the folder may not)")
    if not _GLOB.search(pure.name):
        return remote, None
    return str(pure.parent), pure.name


# Keys a user may set, in config.json or as flags, with their config.json spelling.
TASK_KEYS = tuple(
    (field.alias or name)
    for name, field in TaskSettings.model_fields.items()
    if name not in ("name", "save_path_is_folder", "destination_url")
)
MANIFEST_ENV = "DATAFERRY_MANIFEST"
MAX_CONFIG_BYTES = 2**20
MANIFEST_NAME = "dataferry.manifest.json"

_MESSAGES = {
    "int_parsing": "expected a whole number",
    "int_type": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "string_type": "expected a string",
    "path_type": "expected a path string",
    "missing": "is required but not set",
    "literal_error": "expected one of",
}


def _describe_error(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "value_error":
        # Our own validators: pydantic prefixes "Value error, ".
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return f"unknown key (known keys: {', '.join(TASK_KEYS)})"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return str(error["msg"]).lower().replace("input should be", "must be")
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"expected one of {expected}".replace("'", "")
    return _MESSAGES.get(kind, str(error["msg"]))


def _show(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else json.dumps(value, default=str)


@dataclass(frozen=True)
class ConfigFile:
    """A parsed config.json: ``common`` plus named task sections."""

    path: Path
    common: dict[str, Any]
    tasks: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, path: Path) -> ConfigFile:
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_CONFIG_BYTES + 1)
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path}: larger than {MAX_CONFIG_BYTES // 2**20} MiB; not a config file?"
            )
        try:
            text = raw.decode("utf-8-sig")  # a byte order mark is no error
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{path}: cannot read config file: not UTF-8 ({exc.reason})"
            ) from None
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        except RecursionError:
            raise ConfigError(f"{path}: invalid JSON: nested too deeply") from None
        if not isinstance(document, dict):
            raise ConfigError(f"{path}: expected a JSON object with a common section and tasks")
        common = document.get("common", {})
        if not isinstance(common, dict):
            raise ConfigError(f"{path}: common: expected an object of settings")
        tasks: dict[str, dict[str, Any]] = {}
        for name, section in document.items():
            if name == "common":
                continue
            if not isinstance(section, dict):
                raise ConfigError(f"{path}: {name}: expected an object of settings")
            tasks[name] = section
        return cls(path=path, common=common, tasks=tasks)

    def section(self, task: str) -> dict[str, Any]:
        if task not in self.tasks:
            known = ", ".join(self.tasks) or "none"
            raise ConfigError(f'{self.path}: no task "{task}"; tasks in this file: {known}')
        return self.tasks[task]


def resolve_task(
    task: str,
    config: ConfigFile | None,
    overrides: Mapping[str, object] | None = None,
) -> TaskSettings:
    """Merge flag > task section > common > defaults and validate the result."""
    values: dict[str, object] = {}
    origin: dict[str, str] = {}
    if config is not None:
        section = config.section(task)
        for scope, items in (("common", config.common), (task, section)):
            for key, value in items.items():
                values[key] = value
                origin[key] = f"{config.path}: {scope}.{key}"
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
            origin[key] = f"--{key}"
    try:
        settings = TaskSettings.model_validate({"name": task, **values})
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0]) if error["loc"] else ""
        where = origin.get(key) or (
            f"{config.path}: {task}.{key}" if config is not None else f"--{key}"
        )
        message = _describe_error(error)
        if error["type"] == "missing":
            flag = f"--{key}"
            scope = f"{config.path}: {task}" if config is not None else "the command line"
            raise ConfigError(
                f"{scope}: {key} is required; set it in the task section, in common, or with {flag}"
            ) from None
        if error["type"] == "extra_forbidden":
            # Never echo the value of a key we do not know: it may be a password.
            close = difflib.get_close_matches(key, TASK_KEYS, n=1)
            message = (
                f"unknown key {key}; did you mean {close[0]}?"
                if close
                else f"unknown key {key} (known keys: {', '.join(TASK_KEYS)})"
            )
        elif key in values:
            message = f"{message}, got {_show(values[key])}"
        raise ConfigError(f"{where}: {message}") from None
    check_container_save_path(settings)
    if settings.manifest is None:
        settings = settings.model_copy(update={"manifest": default_manifest_path(config)})
    return settings


def default_manifest_path(config: ConfigFile | None) -> Path:
    """DATAFERRY_MANIFEST, else dataferry.manifest.json beside the config file (or here)."""
    from_env = os.environ.get(MANIFEST_ENV)
    if from_env:
        return Path(from_env)
    if config is not None:
        return config.path.parent / MANIFEST_NAME
    return Path(MANIFEST_NAME)


def check_container_save_path(settings: TaskSettings) -> None:
    """In a container, a save path outside the mounted data folder would be lost."""
    data_dir = os.environ.get(DATA_DIR_ENV)
    if not data_dir or settings.destination_url is not None:
        return
    root = Path(data_dir).resolve()
    target = settings.file_save_path.resolve()
    if target != root and root not in target.parents:
        raise ConfigError(
            f"{settings.name}.file_save_path: {settings.file_save_path} is outside the "
            f"container's data folder {root} ({DATA_DIR_ENV}); the file would be lost when "
            "the container exits. Save under the folder the compose file mounts as a volume."
        )


def _destination_url(text: str) -> str | None:
    """A URL destination (s3://bucket/prefix) checked, or None for a plain path."""
    if "://" not in text:
        return None  # a plain path: the sinks need not load
    from .sinks import destination_scheme

    scheme = destination_scheme(text.strip())
    if scheme is None:
        return None
    rest = text.strip()[len(scheme) + 3 :]
    bucket = rest.split("/", 1)[0]
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ValueError(
            f"expected {scheme}://BUCKET/PREFIX with a bucket name of 3-63 lowercase "
            "letters, digits, dots and hyphens"
        )
    if any(part in (".", "..") for part in rest.split("/")[1:]):
        raise ValueError("'.' and '..' are not allowed in an object key prefix")
    return f"{scheme}://{rest}"
