"""
The twistd entry point: command-line ``Options`` and ``makeService``.

The options are generated from :data:`imserver.config.SETTINGS`, so the
command line, the environment and the config file always offer the same
settings. A bad value ends start-up with one line on stderr and exit status 2,
not a traceback.
"""

import gc
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


def tune_gc(service) -> None:
    """Process-wide garbage-collector settings for a long-running server.

    The default thresholds run a young-generation pass every 700 new
    container objects; a busy reactor allocates that many in a fraction of a
    millisecond (Deferreds, frames, event dicts that die young), so the
    collector ran thousands of times a second. Larger thresholds cut that
    (about +30 % on the 1:1 message bench). Once start-up is done,
    ``gc.freeze`` moves everything alive then (modules, the service graph)
    out of the collector's sight, so the older-generation passes that remain
    walk only the objects of running sessions.
    """
    gc.set_threshold(50_000, 20, 100)

    def freeze(result):
        gc.freeze()
        return result

    service.ready.addCallback(freeze)


def makeService(options):
    from imserver.service import IMService

    service = IMService(options.config)
    # here, in the process entry point, not in the service: tests run many
    # services in one process
    tune_gc(service)
    return service
