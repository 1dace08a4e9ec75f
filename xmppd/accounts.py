"""Account administration shared by xmppctl, the demo set-up and in-band registration."""

from __future__ import annotations

from .config import Config
from .sasl import derive_credentials
from .storage import Storage, open_storage


async def open_configured_storage(config: Config) -> Storage:
    storage = config.storage
    return await open_storage(storage.backend, sqlite_path=storage.sqlite_path,
                              postgresql_dsn=storage.postgresql_dsn, pool_size=storage.postgresql_pool_size)


async def set_password(config: Config, username: str, password: str, *, create: bool) -> bool:
    """Store the SCRAM keys for a new password (the only time the password is hashed).
    With create=True a missing account is created; returns False if nothing could be done."""
    credentials = derive_credentials(password, config.auth.scram_iterations)
    storage = await open_configured_storage(config)
    try:
        if await storage.set_credentials(username, credentials):
            return True
        return create and await storage.create_user(username, credentials)
    finally:
        await storage.close()
