"""config.json + flags: precedence, parsing, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataferry import ConfigError, ConfigFile, resolve_task

REPO = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, document: object) -> ConfigFile:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document))
    return ConfigFile.load(path)


BASE = {
    "common": {
        "max_tries": 4,
        "retry_delay": 1,
        "log-level": "INFO",
        "overwrite": "False",
        "keep_zip_tar_file": "True",
    },
    "task_1": {"file_save_path": "./data/a.zip", "remote_file_path": "/r/a.zip", "max_tries": 7},
    "task_2": {"file_save_path": "./data/b.tar.gz", "remote_file_path": "/r/b.tar.gz"},
}


def test_shipped_config_is_valid() -> None:
    config = ConfigFile.load(REPO / "config.json")
    assert list(config.tasks) == ["task_1", "task_2", "task_3"]
    for name in config.tasks:
        task = resolve_task(name, config)
        assert task.remote_file_path.startswith("/home/sofascore_academy/l2_dataset/")


def test_precedence_flag_over_task_over_common_over_default(tmp_path: Path) -> None:
    config = write_config(tmp_path, BASE)
    task_1 = resolve_task("task_1", config)
    assert task_1.max_tries == 7  # task section beats common
    assert resolve_task("task_2", config).max_tries == 4  # common beats default
    assert resolve_task("task_1", config, {"max_tries": "9"}).max_tries == 9  # flag beats all
    assert task_1.include == ("*.csv", "*.zip")  # built-in default
    flagged = resolve_task("task_1", config, {"file_save_path": "/elsewhere/x.zip"})
    assert flagged.file_save_path == Path("/elsewhere/x.zip")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("True", True),
        ("False", False),
        ("true", True),
        ("FALSE", False),
        (True, True),
        (False, False),
        ("yes", True),
        ("no", False),
        ("1", True),
        ("0", False),
    ],
)
def test_booleans_from_json_and_strings(tmp_path: Path, raw: object, expected: bool) -> None:
    config = write_config(tmp_path, {**BASE, "common": {"overwrite": raw}})
    assert resolve_task("task_1", config).overwrite is expected
    # The seed parsed --overwrite False as True; it must mean false.
    flag = resolve_task("task_1", config, {"overwrite": "False"})
    assert flag.overwrite is False


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("task_2", "max_tries", "abc", 'task_2.max_tries: expected a whole number, got "abc"'),
        ("task_2", "max_tries", 0, "task_2.max_tries: must be greater than or equal to 1, got 0"),
        ("task_2", "max_tries", 2.5, "task_2.max_tries: expected a whole number, got 2.5"),
        ("common", "retry_delay", "soon", 'common.retry_delay: expected a number, got "soon"'),
        ("common", "retry_delay", -1, "common.retry_delay: must be greater than or equal to 0"),
        ("task_1", "overwrite", "maybe", 'task_1.overwrite: expected true or false, got "maybe"'),
        ("task_1", "keep_zip_tar_file", 3, "task_1.keep_zip_tar_file: expected true or false"),
        ("task_1", "log-level", "LOUD", "task_1.log-level: expected one of DEBUG, INFO"),
        ("task_1", "remote_file_path", "", "task_1.remote_file_path: must not be empty"),
        ("task_1", "include", [], "task_1.include: expected a non-empty list of glob patterns"),
        ("task_1", "maxtries", 3, "task_1.maxtries: unknown key maxtries; did you mean max_tries?"),
        ("task_1", "zzz", 3, "task_1.zzz: unknown key zzz (known keys: file_save_path"),
    ],
)
def test_bad_values_name_file_task_and_key(
    tmp_path: Path, section: str, key: str, value: object, message: str
) -> None:
    document = json.loads(json.dumps(BASE))
    document[section][key] = value
    config = write_config(tmp_path, document)
    task = section if section != "common" else "task_1"
    with pytest.raises(ConfigError) as caught:
        resolve_task(task, config)
    text = str(caught.value)
    assert text.startswith(f"{config.path}: ")
    assert message in text
    assert "\n" not in text


def test_bad_flag_value_names_the_flag(tmp_path: Path) -> None:
    config = write_config(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r'^--max_tries: expected a whole number, got "x"$'):
        resolve_task("task_1", config, {"max_tries": "x"})


def test_unknown_task_lists_the_tasks(tmp_path: Path) -> None:
    config = write_config(tmp_path, BASE)
    with pytest.raises(ConfigError, match='no task "task_9"; tasks in this file: task_1, task_2'):
        resolve_task("task_9", config)


def test_missing_paths_say_how_to_set_them(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"common": {}, "task_1": {"file_save_path": "x"}})
    with pytest.raises(ConfigError, match=r"remote_file_path is required.*--remote_file_path"):
        resolve_task("task_1", config)
    with pytest.raises(ConfigError, match="the command line: file_save_path is required"):
        resolve_task("task_1", None, {"remote_file_path": "/x"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "invalid JSON at line 1"),
        ("[]", "expected a JSON object"),
        ('{"common": 3}', "common: expected an object"),
        ('{"task_1": "x"}', "task_1: expected an object"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        ConfigFile.load(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        ConfigFile.load(tmp_path / "nope.json")


def test_container_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAFERRY_DATA_DIR", str(tmp_path / "data"))
    inside = {"file_save_path": str(tmp_path / "data/task1/a.zip"), "remote_file_path": "/a"}
    assert resolve_task("t", None, inside).file_save_path.name == "a.zip"
    outside = {"file_save_path": str(tmp_path / "elsewhere/a.zip"), "remote_file_path": "/a"}
    with pytest.raises(ConfigError, match="outside the container's data folder"):
        resolve_task("t", None, outside)


# Any config document either validates or fails with a one-line ConfigError.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
keys = st.sampled_from(
    [
        "file_save_path",
        "remote_file_path",
        "keep_zip_tar_file",
        "max_tries",
        "retry_delay",
        "log-level",
        "overwrite",
        "include",
        "metrics_port",
        "bogus",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    common=st.dictionaries(keys, json_values, max_size=5),
    task=st.dictionaries(keys, json_values, max_size=5),
)
def test_any_config_is_valid_or_a_clear_error(
    tmp_path_factory: pytest.TempPathFactory, common: dict[str, object], task: dict[str, object]
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps({"common": common, "task_1": task}))
    try:
        resolve_task("task_1", ConfigFile.load(path))
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)


def test_a_value_under_an_unknown_key_is_never_echoed(tmp_path: Path) -> None:
    """A password put into config.json by mistake stays out of the error."""
    config = write_config(tmp_path, {**BASE, "task_1": {**BASE["task_1"], "password": "hunter2"}})
    with pytest.raises(ConfigError, match="unknown key password") as error:
        resolve_task("task_1", config)
    assert "hunter2" not in str(error.value)


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(BASE).encode())
    assert resolve_task("task_2", ConfigFile.load(path)).max_tries == 4


def test_huge_or_deep_config_files_fail_at_once(tmp_path: Path) -> None:
    """/dev/zero or a 100,000-deep JSON: one line, exit 2, no memory blow-up."""
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        ConfigFile.load(Path("/dev/zero"))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        ConfigFile.load(deep)


def test_tilde_means_the_home_folder(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            **BASE,
            "task_2": {
                **BASE["task_2"],
                "file_save_path": "~/data/b.tar.gz",
                "manifest": "~/m.json",
            },
        },
    )
    task = resolve_task("task_2", config)
    assert task.file_save_path == Path.home() / "data" / "b.tar.gz"
    assert task.manifest == Path.home() / "m.json"
