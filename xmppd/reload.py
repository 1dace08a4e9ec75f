"""SIGHUP: read the configuration file again and apply it without dropping a session.

The file is read and checked exactly as at start (and as `xmppctl check-config`
does); a file with errors changes nothing, and the log says why. From a good
file, everything that can change at run time takes effect for new work: the TLS
certificate and key (read again even when their paths did not change, so a
renewed certificate is picked up), the log level and file (reopened, for
logrotate), [c2s] and [auth] settings for new connections, and the options of
the modules, which re-read them on the 'config-reloaded' hook. Connections and
sessions that exist keep what they started with.

What is bound at start (listeners, storage, the domain, the set of modules …)
keeps its running value; each such changed key is logged as "needs a restart".
merge() decides that and is testable without a server.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from .config import OPTIONS, SECTIONS, Config, ConfigError, load_config, toml_value

if TYPE_CHECKING:
    from .main import Running

log = logging.getLogger("xmppd.reload")

# Options bound at start: (section, key), or (section, None) for every key of the section.
RESTART_ONLY = frozenset({
    ("server", "domain"),
    ("storage", None),
    ("c2s", "interfaces"), ("c2s", "port"), ("c2s", "direct_tls_port"),
    # The throttle keeps the failures it counted; new limits would need a new one, which forgets them.
    ("auth", "throttle_free_failures"), ("auth", "throttle_max_delay"), ("auth", "throttle_window"),
    ("modules", "enabled"),
    ("metrics", "port"), ("metrics", "interface"),
    ("control", "socket"),
    ("register", "min_interval"),
    ("version", "show_os"),
    ("appserver", None),
})


def needs_restart(section: str, key: str) -> bool:
    return (section, key) in RESTART_ONLY or (section, None) in RESTART_ONLY


def merge(running: Config, loaded: Config) -> tuple[Config, list[str]]:
    """The configuration to run with after a reload: `loaded`, except that options that need a restart
    keep their running value. Returns it and the "[section] key" of each such option that changed. TLS
    that is turned on or off needs a restart too (the listeners and features depend on it)."""
    kept = []
    sections = {}
    for section in SECTIONS:
        old, new = getattr(running, section), getattr(loaded, section)
        changes = {}
        for option in (o for o in OPTIONS if o.section == section):
            if getattr(old, option.key) != getattr(new, option.key) and needs_restart(section, option.key):
                kept.append(f"[{section}] {option.key}")
                changes[option.key] = getattr(old, option.key)
        sections[section] = dataclasses.replace(new, **changes) if changes else new
    if bool(running.tls.certificate) != bool(loaded.tls.certificate):
        kept += ["[tls] certificate", "[tls] private_key"]
        sections["tls"] = running.tls
    return dataclasses.replace(loaded, **sections), kept


def reload(running: "Running") -> bool:
    """Re-read running.config.path and apply it; True if the new file is in use."""
    from .tls import TLSError

    path = running.config.path
    log.info("reloading the configuration from %s", path)
    try:
        loaded = load_config(path)
    except ConfigError as error:
        log.error("reload: configuration error (the running configuration stays in use):\n%s", error)
        return False
    config, kept = merge(running.config, loaded)
    for name in kept:
        section, key = name[1:].split("] ")
        log.warning("reload: needs a restart: %s (the file says %s; %s stays in use until then)", name,
                    toml_value(getattr(getattr(loaded, section), key)),
                    toml_value(getattr(getattr(running.config, section), key)))
    try:
        running.apply_config(config)
    except (TLSError, OSError) as error:
        log.error("reload: %s (the running configuration stays in use)", error)
        return False
    log.info("configuration reloaded%s", f"; {len(kept)} changes wait for a restart" if kept else "")
    return True
