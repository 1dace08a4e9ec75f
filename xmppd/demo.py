"""`xmppd --demo DIR`: a development server in one command.

Creates DIR with a config for localhost (SQLite, loopback only, a self-signed
certificate) on first use, and gives the account demo@localhost a fresh
password every start, printed to the terminal.
"""

from __future__ import annotations

import asyncio
import os
import secrets

from .certs import generate_self_signed
from .config import Config, load_config

DEMO_USER = "demo"

CONFIG_TEMPLATE = """\
# Development configuration written by `xmppd --demo`. See conf/xmppd.toml for every option.
[server]
domain = "localhost"

[storage]
backend = "sqlite"
sqlite_path = "xmppd.sqlite3"

[tls]
certificate = "localhost.crt"
private_key = "localhost.key"

[c2s]
interfaces = ["127.0.0.1", "::1"]
port = {port}
direct_tls_port = {direct_tls_port}
"""


def prepare_demo(directory: str, *, port: int = 5222, direct_tls_port: int = 5223) -> Config:
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    config_path = os.path.join(directory, "xmppd.toml")
    if not os.path.exists(os.path.join(directory, "localhost.crt")):
        generate_self_signed("localhost", os.path.join(directory, "localhost.crt"),
                             os.path.join(directory, "localhost.key"), extra_names=("127.0.0.1", "::1"))
    if not os.path.exists(config_path):
        with open(config_path, "w", encoding="utf-8") as f:
            f.write(CONFIG_TEMPLATE.format(port=port, direct_tls_port=direct_tls_port))
    config = load_config(config_path)
    password = secrets.token_urlsafe(9)
    asyncio.run(_set_password(config, DEMO_USER, password))
    print(f"""
xmppd demo server for {config.server.domain}, files in {directory}
  account:  {DEMO_USER}@{config.server.domain}
  password: {password}
  ports:    {config.c2s.port} (STARTTLS), {config.c2s.direct_tls_port} (direct TLS), loopback only
The certificate is self-signed: let your client trust it once (Gajim asks; Conversations: see README).
More accounts: xmppctl --config {config_path} adduser NAME@{config.server.domain}
""", flush=True)
    return config


async def _set_password(config: Config, username: str, password: str) -> None:
    from .accounts import set_password

    await set_password(config, username, password, create=True)
