"""
The twistd entry point: command-line ``Options`` and ``makeService``.

The options are generated from :data:`imserver.config.SETTINGS`, so the
command line, the environment and the config file always offer the same
settings. A bad value ends start-up with one line on stderr and exit status 2,
not a traceback.
"""

import sys

from twisted.python import usage

from imserver.config import SETTINGS, ConfigError, resolve


def _make_handler(setting):
    if setting.flag:
        def handler(self):
            self.given[setting.name] = True
    else:
        def handler(self, value):
            if setting.repeat:
                self.given.setdefault(setting.name, []).append(value)
            else:
                self.given[setting.name] = [value]
    default = "" if setting.flag or setting.default in (None, "", ()) else (
        f" [default: {', '.join(setting.default) if setting.repeat else setting.default}]")
    handler.__doc__ = setting.help + default + f" (env {setting.env})"
    handler.__name__ = "opt_" + setting.name
    return handler


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serves the five chat/IM dialects (000 chat, 001 account, 002 ktv, 003 chatroom,"
        " 004 signal) over one account system and one Redis. Every option can also be set"
        " as an IMSERVER_<NAME> environment variable or in a TOML file given with --config."
    )

    def __init__(self):
        super().__init__()
        self.given = {}
        self.config = None

    def opt_config(self, path):
        """TOML config file whose keys are the option names (env IMSERVER_CONFIG)."""
        self.given["__config__"] = path

    def postOptions(self):
        given = dict(self.given)
        config_file = given.pop("__config__", None)
        try:
            self.config = resolve(given, config_file=config_file)
        except ConfigError as e:
            sys.stderr.write(f"imserver: error: {e}\n")
            raise SystemExit(2)


for _s in SETTINGS:
    setattr(Options, "opt_" + _s.name, _make_handler(_s))


def makeService(options):
    from imserver.service import IMService

    return IMService(options.config)
