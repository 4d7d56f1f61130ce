from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lazylayer.shared.config import Config, knob_of, load_config
from lazylayer.shared.errors import ConfigError

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "config" / "lazylayer.toml"


def test_default_file_documents_every_knob_with_its_default():
    document = tomllib.loads(DEFAULT_FILE.read_text())
    text = DEFAULT_FILE.read_text()
    defaults = Config()
    for section in Config.__struct_fields__:
        values = getattr(defaults, section)
        assert set(document[section]) == set(values.__struct_fields__), section
        for key in values.__struct_fields__:
            value = getattr(values, key)
            assert document[section][key] == (list(value) if isinstance(value, tuple) else value)
            assert f"# {knob_of(type(values), key).doc}" in text
    loaded = load_config(DEFAULT_FILE, env={})
    assert loaded.config == defaults


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[workers]\ncount = 3\nrequest_timeout = 5\n[cache]\nmax_size = 1000\n")
    loaded = load_config(
        path,
        env={"LAZYLAYER_WORKERS_COUNT": "5", "LAZYLAYER_CACHE_MAX_SIZE": "2000", "HOME": "/root"},
        overrides={"workers.count": 7},
    )
    c = loaded.config
    assert (c.workers.count, c.cache.max_size, c.workers.request_timeout, c.fuse.attr_timeout) == (7, 2000, 5.0, 1.0)
    assert loaded.sources["workers.count"] == "flag"
    assert loaded.sources["cache.max_size"] == "LAZYLAYER_CACHE_MAX_SIZE"
    assert loaded.sources["workers.request_timeout"] == f"file {path}"
    assert "fuse.attr_timeout" not in loaded.sources


@pytest.mark.parametrize(
    "text,message",
    [
        ("[workers]\ncuont = 3\n", "unknown config key 'workers.cuont'"),
        ("[wrokers]\ncount = 3\n", "unknown config section 'wrokers'"),
        ("[workers]\ncount = 'many'\n", "config key 'workers.count': 'many' is not an integer"),
        ("[fuse]\nallow_other = 1\n", "config key 'fuse.allow_other': 1 is not true or false"),
        ("[fuse]\nopaque_type = 'both'\n", "'both' is not one of trusted, user, all"),
        ("[registry]\nmirrors = ['x']\n", "not a table of HOST = [strings]"),
        ("[workers\n", "config file"),
        ("count = 3\n", "must be a [section] table"),
    ],
)
def test_bad_files_are_refused_naming_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(path, env={})


def test_bad_environment_is_refused():
    with pytest.raises(ConfigError, match="LAZYLAYER_NOPE_X"):
        load_config("", env={"LAZYLAYER_NOPE_X": "1"})
    with pytest.raises(ConfigError, match="'prefetch.enabled': 'maybe' is not true or false"):
        load_config("", env={"LAZYLAYER_PREFETCH_ENABLED": "maybe"})


def test_env_tables_and_lists():
    c = load_config("", env={"LAZYLAYER_REGISTRY_MIRRORS": "docker.io=http://a:5000,http://b;quay.io=c",
                               "LAZYLAYER_REGISTRY_PLAIN_HTTP": "r1:5000;r2"}).config
    assert c.registry.mirrors == {"docker.io": ("http://a:5000", "http://b"), "quay.io": ("c",)}
    assert c.registry.plain_http == ("r1:5000", "r2")


def test_config_show_cli(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[workers]\ncount = 3\n")
    out = subprocess.run(
        [sys.executable, "-m", "lazylayer.daemon.cli.main", "config", "show", "--config", str(path), "--json"],
        capture_output=True, text=True, check=True, env={"LAZYLAYER_FUSE_ATTR_TIMEOUT": "2.5", "PATH": "/usr/bin"},
    ).stdout
    import json

    rows = {row["key"]: row for row in json.loads(out)}
    assert rows["workers.count"]["value"] == 3 and rows["workers.count"]["source"] == f"file {path}"
    assert rows["fuse.attr_timeout"]["value"] == 2.5 and rows["fuse.attr_timeout"]["source"] == "LAZYLAYER_FUSE_ATTR_TIMEOUT"
    assert rows["cache.max_size"]["source"] == "default"
    bad = subprocess.run(
        [sys.executable, "-m", "lazylayer.daemon.cli.main", "config", "show", "--config", str(tmp_path / "nope.toml")],
        capture_output=True, text=True,
    )
    assert bad.returncode == 1 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_reload_separates_live_knobs_from_restart_ones(tmp_path):
    from lazylayer.shared.config import config_changes

    old = load_config("", env={}).config
    path = tmp_path / "c.toml"
    path.write_text('[daemon]\nlog_level = "DEBUG"\nmountpoint = "/mnt/x"\n[workers]\ncount = 4\n'
                    '[cache]\nmax_size = 1073741824\n')
    changes = config_changes(old, load_config(path, env={}).config)
    assert changes.live == {"daemon.log_level": "DEBUG", "workers.count": 4, "cache.max_size": 1 << 30}
    assert changes.restart == {"daemon.mountpoint": "/mnt/x"}
    assert config_changes(old, old).live == {} == config_changes(old, old).restart


@pytest.mark.parametrize(
    "text,message",
    [
        ("[workers]\ncount = -1\n", "'workers.count': -1 is out of range (allowed: >= 0)"),
        ("[cache]\nmax_size = -5\n", "'cache.max_size': -5 is out of range (allowed: >= 0)"),
        ("[workers]\ncapacity = 0\n", "'workers.capacity': 0 is out of range (allowed: >= 1)"),
        ("[workers]\nheartbeat_interval = -1\n", "'workers.heartbeat_interval': -1.0 is out of range (allowed: > 0)"),
        ("[workers]\nrequest_timeout = 0\n", "'workers.request_timeout': 0.0 is out of range (allowed: > 0)"),
        ("[prefetch]\ntimeout = nan\n", "'prefetch.timeout': nan is not a finite number"),
        ("[format]\nchunk_size = '0K'\n", "'format.chunk_size': 0 is out of range (allowed: > 0)"),
        ("[cache]\nmax_size = '8 parsecs'\n", "'cache.max_size': '8 parsecs' is not a size"),
    ],
)
def test_values_out_of_range_are_refused_with_key_value_and_range(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={})
    assert str(refused.value).startswith(f"file {path}: ") and message in str(refused.value)


def test_range_applies_to_environment_and_flags():
    with pytest.raises(ConfigError, match=r"^LAZYLAYER_CACHE_MAX_SIZE: .*-5 is out of range \(allowed: >= 0\)"):
        load_config("", env={"LAZYLAYER_CACHE_MAX_SIZE": "-5"})
    with pytest.raises(ConfigError, match=r"^LAZYLAYER_WORKERS_COUNT: config key 'workers.count': -1 is out of range"):
        load_config("", env={"LAZYLAYER_WORKERS_COUNT": "-1"})
    with pytest.raises(ConfigError, match=r"^command line: config key 'workers.count': -1 is out of range"):
        load_config("", env={}, overrides={"workers.count": -1})


def test_daemon_workers_flag_out_of_range_is_one_line(tmp_path):
    try:
        done = subprocess.run([sys.executable, "-m", "lazylayer.daemon.cli.main", "daemon", "--workers", "-1",
                               "--mountpoint", str(tmp_path / "mnt"), "--run-dir", str(tmp_path / "run")],
                              capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/bin", "LAZYLAYER_CONFIG": ""})
    finally:  # a daemon that started anyway is killed by the timeout: leave no mount behind
        subprocess.run(["umount", "-l", str(tmp_path / "mnt")], capture_output=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("lazylayer daemon: command line: config key 'workers.count': -1 is out of range "
                                   "(allowed: >= 0)")
    assert not (tmp_path / "mnt").exists()


def test_sizes_take_the_same_suffixes_in_file_environment_and_flags(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[cache]\nmax_size = '8G'\nmap_size = '64GiB'\n[background]\nbandwidth_limit = '10M'\n")
    c = load_config(path, env={"LAZYLAYER_REGISTRY_COALESCE_GAP": "64K"},
                    overrides={"format.chunk_size": "4M"}).config
    assert (c.cache.max_size, c.cache.map_size, c.background.bandwidth_limit) == (8 << 30, 64 << 30, 10 << 20)
    assert (c.registry.coalesce_gap, c.format.chunk_size) == (64 << 10, 4 << 20)
    with pytest.raises(ConfigError, match="'workers.count': '4M' is not an integer"):
        load_config("", env={}, overrides={"workers.count": "4M"})  # counts are not sizes


def test_type_errors_name_the_file_or_variable(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[workers]\ncount = 'many'\n")
    with pytest.raises(ConfigError, match=f"^file {path}: config key 'workers.count': 'many' is not an integer"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="^LAZYLAYER_FUSE_ALLOW_OTHER: config key 'fuse.allow_other': 'maybe'"):
        load_config("", env={"LAZYLAYER_FUSE_ALLOW_OTHER": "maybe"})


def test_unknown_section_lists_the_valid_ones(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[wrokers]\ncount = 3\n")
    with pytest.raises(ConfigError, match=r"unknown config section 'wrokers' .*sections: daemon, workers, cache, "):
        load_config(path, env={})


def test_the_default_file_is_read_and_named_first(tmp_path, monkeypatch):
    import lazylayer.shared.config as config_module

    etc = tmp_path / "lazylayer.toml"
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", str(etc))
    assert load_config(None, env={}).file is None
    etc.write_text("[workers]\ncount = 5\n")
    loaded = load_config(None, env={})
    assert loaded.file == str(etc) and loaded.config.workers.count == 5
    assert loaded.sources["workers.count"] == f"file {etc}"
    shown = subprocess.run(
        [sys.executable, "-m", "lazylayer.daemon.cli.main", "config", "show", "--config", str(etc)],
        capture_output=True, text=True, check=True, env={"PATH": "/usr/bin"},
    ).stdout
    assert shown.splitlines()[0] == f"config file: {etc}"
