"""The configuration of a PEP node (XEP-0060 §16.4 pubsub#node_config), with no I/O.

One table says, for each option a PEP node has, its field type and how a value
a client sends is read; publish-options (§7.1.5), node creation with
configuration and the owner's configure form all go through it, so a value
means the same wherever a client gives it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable

from lxml import etree

from .dataforms import FIELD, NS_DATA, VALUE, form_type
from .stanza import qname

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NODE_CONFIG = f"{NS_PUBSUB}#node_config"
PUBLISH_OPTIONS = f"{NS_PUBSUB}#publish-options"

ACCESS_MODELS = ("open", "presence", "roster", "whitelist")
SEND_LAST = ("never", "on_sub", "on_sub_and_presence")


class BadOption(ValueError):
    """A configuration field a node does not have, or a value it cannot take."""

    def __init__(self, var: str, problem: str) -> None:
        super().__init__(f"{var}: {problem}")
        self.var = var


@dataclass(frozen=True)
class NodeConfig:
    """Defaults are XEP-0163 §8's: presence access, notifications with payloads, the last item sent
    on subscription and presence. One item by default, as in Prosody and ejabberd: PEP data is
    mostly "the current value" (avatar, device list); nodes that want history ask for max_items."""

    access_model: str = "presence"
    max_items: int = 1
    persist_items: bool = True
    send_last_published_item: str = "on_sub_and_presence"
    deliver_notifications: bool = True
    deliver_payloads: bool = True
    notify_retract: bool = True
    notify_delete: bool = True
    roster_groups_allowed: tuple[str, ...] = ()
    title: str = ""
    description: str = ""
    type: str = ""                      # the payload's namespace, for information
    publish_model: str = "publishers"   # in PEP only the owner publishes: the one model there is
    notification_type: str = "headline"  # notifications are headlines (a normal message would be stored)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "NodeConfig":
        stored = json.loads(text)
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in stored.items() if key in known}
        if "roster_groups_allowed" in values:
            values["roster_groups_allowed"] = tuple(values["roster_groups_allowed"])
        return cls(**values)


def _single(values: list[str], var: str) -> str:
    if len(values) != 1:
        raise BadOption(var, "takes exactly one value")
    return values[0]


def _boolean(values: list[str], var: str, _cap: int) -> bool:
    value = _single(values, var)
    if value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise BadOption(var, f"is a boolean, not {value!r}")


def _choice(choices: tuple[str, ...]) -> Callable[[list[str], str, int], str]:
    def read(values: list[str], var: str, _cap: int) -> str:
        value = _single(values, var)
        if value not in choices:
            raise BadOption(var, f"is one of {', '.join(choices)}, not {value!r}")
        return value
    return read


def _max_items(values: list[str], var: str, cap: int) -> int:
    value = _single(values, var)
    if value == "max":   # XEP-0060 §16.4: as many as the service allows
        return cap
    try:
        number = int(value)
    except ValueError:
        raise BadOption(var, f"is a number or 'max', not {value!r}") from None
    if not 1 <= number <= cap:
        raise BadOption(var, f"is between 1 and {cap} here, not {number}")
    return number


def _text(values: list[str], var: str, _cap: int) -> str:
    return values[0] if values else ""


def _groups(values: list[str], var: str, _cap: int) -> tuple[str, ...]:
    return tuple(sorted(set(values)))


# var -> (attribute, XEP-0004 field type, reader of the submitted values)
OPTIONS = {
    "pubsub#access_model": ("access_model", "list-single", _choice(ACCESS_MODELS)),
    "pubsub#max_items": ("max_items", "text-single", _max_items),
    "pubsub#persist_items": ("persist_items", "boolean", _boolean),
    "pubsub#send_last_published_item": ("send_last_published_item", "list-single", _choice(SEND_LAST)),
    "pubsub#deliver_notifications": ("deliver_notifications", "boolean", _boolean),
    "pubsub#deliver_payloads": ("deliver_payloads", "boolean", _boolean),
    "pubsub#notify_retract": ("notify_retract", "boolean", _boolean),
    "pubsub#notify_delete": ("notify_delete", "boolean", _boolean),
    "pubsub#roster_groups_allowed": ("roster_groups_allowed", "list-multi", _groups),
    "pubsub#title": ("title", "text-single", _text),
    "pubsub#description": ("description", "text-single", _text),
    "pubsub#type": ("type", "text-single", _text),
    "pubsub#publish_model": ("publish_model", "list-single", _choice(("publishers",))),
    "pubsub#notification_type": ("notification_type", "list-single", _choice(("headline",))),
}


CHOICES = {"pubsub#access_model": ACCESS_MODELS, "pubsub#send_last_published_item": SEND_LAST,
           "pubsub#publish_model": ("publishers",), "pubsub#notification_type": ("headline",)}


def form_values(form: etree._Element, expected_type: str) -> dict[str, list[str]]:
    """var -> values of a submitted form; BadOption if its FORM_TYPE is another one."""
    kind = form_type(form)
    if kind is not None and kind != expected_type:
        raise BadOption("FORM_TYPE", f"is {expected_type}, not {kind}")
    return {f.get("var", ""): [v.text or "" for v in f.iterchildren(VALUE)]
            for f in form.iterchildren(FIELD) if f.get("var") != "FORM_TYPE"}


def apply(config: NodeConfig, values: dict[str, list[str]], cap: int) -> NodeConfig:
    """The config with the submitted values set; BadOption for an unknown field or a bad value."""
    changes = {}
    for var, submitted in values.items():
        if var not in OPTIONS:
            raise BadOption(var, "is not an option of nodes here")
        attribute, _, read = OPTIONS[var]
        changes[attribute] = read(submitted, var, cap)
    return replace(config, **changes)


def unmet_precondition(config: NodeConfig, values: dict[str, list[str]], cap: int) -> str | None:
    """XEP-0060 §7.1.5: publish-options are preconditions on an existing node. The first one the node
    does not meet, as text for the error; None if it meets them all."""
    try:
        wanted = apply(config, values, cap)
    except BadOption as error:
        return str(error)
    for var, (attribute, _, _) in OPTIONS.items():
        if getattr(wanted, attribute) != getattr(config, attribute):
            return f"{var} of the node is {', '.join(_values(getattr(config, attribute))) or 'empty'}"
    return None


def config_form(config: NodeConfig) -> etree._Element:
    """The owner's configuration form (XEP-0060 §8.2.1)."""
    form = etree.Element(qname(NS_DATA, "x"), {"type": "form"}, nsmap={None: NS_DATA})
    _field(form, "FORM_TYPE", "hidden", [NODE_CONFIG])
    for var, (attribute, field_type, _) in OPTIONS.items():
        field = _field(form, var, field_type, _values(getattr(config, attribute)))
        for choice in CHOICES.get(var, ()):
            option = etree.SubElement(field, qname(NS_DATA, "option"))
            etree.SubElement(option, VALUE).text = choice
    return form


def _values(value: object) -> list[str]:
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, tuple):
        return list(value)
    return [str(value)]


def _field(form: etree._Element, var: str, field_type: str, values: list[str]) -> etree._Element:
    field = etree.SubElement(form, FIELD, {"var": var, "type": field_type})
    for value in values:
        etree.SubElement(field, VALUE).text = value
    return field
