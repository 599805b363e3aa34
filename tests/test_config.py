"""Settings: command line over environment over config file, checked when read."""

import pathlib

import pytest

from imserver.config import SETTINGS, ConfigError, resolve
from imserver.tap import Options


def test_defaults():
    """With nothing given, the contract's defaults apply."""
    c = resolve({}, environ={})
    assert c.listen == ("tcp:8080",) and c.redis is None
    assert c.data_dir == pathlib.Path("imserver-data") and not c.legacy_auth
    assert c.signal_group_ok_code == 1 and c.sms_sender == "log"


def test_command_line_environment_file_precedence(tmp_path):
    """The command line wins over IMSERVER_* which wins over the TOML file."""
    f = tmp_path / "im.toml"
    f.write_text('listen = ["tcp:1001", "tcp:1002"]\ndata-dir = "/srv/a"\n'
                 'legacy-auth = true\ndialect-listen = { chatroom = "tcp:2333" }\n'
                 'public-url = "https://file.example"\n')
    env = {"IMSERVER_DATA_DIR": "/srv/b", "IMSERVER_PUBLIC_URL": "https://env.example/"}
    c = resolve({"public_url": ["https://cli.example"]}, environ=env, config_file=str(f))
    assert c.listen == ("tcp:1001", "tcp:1002")
    assert c.data_dir == pathlib.Path("/srv/b")
    assert c.public_url == "https://cli.example"
    assert c.legacy_auth is True
    assert c.dialect_listen == (("chatroom", "tcp:2333"),)


def test_options_repeatable_and_flags():
    """--listen and --dialect-listen repeat; flags take no value."""
    o = Options()
    o.parseOptions(["--listen", "tcp:1", "--listen", "unix:/tmp/x.sock",
                    "--dialect-listen", "ktv=tcp:3", "--legacy-auth", "--sms-echo",
                    "--signal-group-ok-code", "0", "--redis", "redis://127.0.0.1:6379/2"])
    c = o.config
    assert c.listen == ("tcp:1", "unix:/tmp/x.sock")
    assert c.dialect_listen == (("ktv", "tcp:3"),)
    assert c.legacy_auth and c.sms_echo and c.signal_group_ok_code == 0
    assert c.redis == "redis://127.0.0.1:6379/2"


def test_environment_lists():
    """A repeatable option's environment variable takes a comma/space separated list."""
    c = resolve({}, environ={"IMSERVER_LISTEN": "tcp:1, tcp:2",
                             "IMSERVER_LEGACY_AUTH": "yes"})
    assert c.listen == ("tcp:1", "tcp:2") and c.legacy_auth


@pytest.mark.parametrize("given, fragment", [
    ({"listen": ["nonsense:1"]}, "--listen"),
    ({"dialect_listen": ["irc=tcp:1"]}, "--dialect-listen"),
    ({"redis": ["http://x"]}, "--redis"),
    ({"redis": ["redis://host/notanumber"]}, "--redis"),
    ({"public_url": ["ftp://x"]}, "--public-url"),
    ({"signal_group_ok_code": ["2"]}, "--signal-group-ok-code"),
    ({"ping_interval": ["-1"]}, "--ping-interval"),
    ({"sms_sender": ["http"]}, "--sms-gateway-url"),
])
def test_invalid_values_one_line(given, fragment):
    """Each bad value is refused with one line naming the option."""
    with pytest.raises(ConfigError) as e:
        resolve(given, environ={})
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_bad_environment_and_file(tmp_path):
    """Bad values from the environment or the file say where they came from."""
    with pytest.raises(ConfigError, match="IMSERVER_MAX_FRAME"):
        resolve({}, environ={"IMSERVER_MAX_FRAME": "big"})
    f = tmp_path / "bad.toml"
    f.write_text("no-such-option = 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve({}, environ={}, config_file=str(f))
    f.write_text("this is not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve({}, environ={}, config_file=str(f))


def test_every_setting_has_an_option_and_help():
    """--help documents every setting, with its environment variable."""
    text = str(Options())
    for s in SETTINGS:
        assert f"--{s.option}" in text
    assert "IMSERVER_DATA_DIR" in text and "--config" in text
