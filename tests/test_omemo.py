"""End to end OMEMO (XEP-0384) through xmppd's PEP: two slixmpp clients with slixmpp-omemo publish their device
lists and bundles (both protocol versions' nodes), fetch each other's, and read each other's messages."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, FrozenSet, Optional

from omemo.storage import Just, Maybe, Nothing, Storage
from omemo.types import DeviceInformation, JSONType
from slixmpp import JID
from slixmpp.plugins import register_plugin
from slixmpp_omemo import XEP_0384

from tests.harness import run
from tests.test_pep import PepClient, befriend

OLDMEMO_DEVICES = "eu.siacs.conversations.axolotl.devicelist"
TWOMEMO_DEVICES = "urn:xmpp:omemo:2:devices"
TWOMEMO_BUNDLES = "urn:xmpp:omemo:2:bundles"


class JSONFileStorage(Storage):
    """The library's keys in a JSON file (what a client keeps on its disk)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path
        self._data: dict[str, JSONType] = json.loads(path.read_text()) if path.exists() else {}

    async def _load(self, key: str) -> Maybe[JSONType]:
        return Just(self._data[key]) if key in self._data else Nothing()

    async def _store(self, key: str, value: JSONType) -> None:
        self._data[key] = value
        self._path.write_text(json.dumps(self._data))

    async def _delete(self, key: str) -> None:
        self._data.pop(key, None)
        self._path.write_text(json.dumps(self._data))


class OmemoPlugin(XEP_0384):
    """slixmpp-omemo with blind trust before verification (BTBV) and keys in a temporary JSON file."""

    default_config = {"fallback_message": "This message is OMEMO encrypted.", "json_file_path": None}

    def plugin_init(self) -> None:
        self._storage = JSONFileStorage(Path(self.json_file_path))
        super().plugin_init()

    @property
    def storage(self) -> Storage:
        return self._storage

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _devices_blindly_trusted(self, blindly_trusted: FrozenSet[DeviceInformation],
                                       identifier: Optional[str]) -> None:
        """Nothing to show: the test trusts every device it meets first."""

    async def _prompt_manual_trust(self, manually_trusted: FrozenSet[DeviceInformation],
                                   identifier: Optional[str]) -> None:
        raise AssertionError(f"BTBV should have decided trust for {manually_trusted}")


OmemoPlugin.name = "xep_0384"
register_plugin(OmemoPlugin)


async def omemo_client(xmppd, jid: str, password: str, key_file: Path) -> PepClient:
    # slixmpp-omemo declares its +notify interests when the plugin loads, before the resource is bound, and
    # slixmpp then leaves them out of the bound JID's caps: declared again once online.
    client = PepClient(xmppd, jid, password, [OLDMEMO_DEVICES, TWOMEMO_DEVICES])
    client.use_message_ids = True
    for plugin in ("xep_0280", "xep_0334"):
        client.register_plugin(plugin)
    client.register_plugin("xep_0384", {"json_file_path": str(key_file)}, module=sys.modules[__name__])
    await client.online()
    await client.plugin["xep_0384"].get_session_manager()   # device list and bundles are published now
    return client


async def encrypted_message(sender: PepClient, recipient: PepClient, text: str) -> None:
    omemo = sender.plugin["xep_0384"]
    message = sender.make_message(mto=recipient.boundjid.bare, mtype="chat", mbody=text)
    encrypted, errors = await omemo.encrypt_message(message, JID(recipient.boundjid.bare))
    assert encrypted is not None and not errors, errors
    assert text not in str(encrypted)
    encrypted.send()


async def decrypted_body(recipient: PepClient) -> tuple[str, Any]:
    while True:
        message = await recipient.next_message(timeout=20)
        omemo = recipient.plugin["xep_0384"]
        if omemo.is_encrypted(message):
            decrypted, device = await omemo.decrypt_message(message)
            return decrypted["body"], device


def test_omemo_message_both_ways(xmppd, account, tmp_path):
    (alice, pa), (bob, pb) = account("alice"), account("bob")

    async def scenario():
        a = await omemo_client(xmppd, alice, pa, tmp_path / "alice.json")
        b = await omemo_client(xmppd, bob, pb, tmp_path / "bob.json")
        await befriend(a, b)
        # Each learnt the other's device list as a new subscriber gets it: the last item (XEP-0163 §4.3.4).
        await a.next_event("publish", OLDMEMO_DEVICES)
        await b.next_event("publish", OLDMEMO_DEVICES)
        # Both versions' device lists and bundles are on the server, readable by the other side.
        a_devices = await b.plugin["xep_0060"].get_items(alice, TWOMEMO_DEVICES, timeout=5)
        [devices] = list(a_devices["pubsub"]["items"])
        a_device_ids = [device.get("id") for device in devices["payload"]]
        assert len(a_device_ids) == 1
        assert list((await b.plugin["xep_0060"].get_items(alice, OLDMEMO_DEVICES, timeout=5))["pubsub"]["items"])
        bundle = await b.plugin["xep_0060"].get_items(alice, TWOMEMO_BUNDLES, item_ids=a_device_ids, timeout=5)
        assert [item["id"] for item in bundle["pubsub"]["items"]] == a_device_ids
        old_bundle = f"eu.siacs.conversations.axolotl.bundles:{a_device_ids[0]}"
        old_items = await b.plugin["xep_0060"].get_items(alice, old_bundle, max_items=1, timeout=5)
        assert len(list(old_items["pubsub"]["items"])) == 1

        await encrypted_message(a, b, "meet me at the orchard")
        body, device = await decrypted_body(b)
        assert body == "meet me at the orchard"
        assert device.bare_jid == alice
        await encrypted_message(b, a, "at midnight")
        body, device = await decrypted_body(a)
        assert body == "at midnight"
        assert device.bare_jid == bob
        for client in (a, b):
            await client.close()

    run(scenario(), timeout=120)
