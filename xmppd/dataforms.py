"""XEP-0004 data forms: the little of them that push needs (FORM_TYPE, adding fields).

Both sides of XEP-0357 speak in forms: the publish-options a client gives in <enable/>, and the
summary the server publishes to the app server. One definition keeps them reading alike.
"""

from __future__ import annotations

from lxml import etree

from .stanza import qname

NS_DATA = "jabber:x:data"
FIELD = qname(NS_DATA, "field")
VALUE = qname(NS_DATA, "value")


def submit_form(form_type: str) -> etree._Element:
    """An empty <x type='submit'/> with its FORM_TYPE."""
    return _form("submit", form_type)


def result_form(form_type: str) -> etree._Element:
    """An empty <x type='result'/> with its FORM_TYPE (a XEP-0128 extension of disco#info, for one)."""
    form = _form("result", form_type)
    form[0].set("type", "hidden")
    return form


def _form(type_: str, form_type: str) -> etree._Element:
    form = etree.Element(qname(NS_DATA, "x"), {"type": type_}, nsmap={None: NS_DATA})
    add_field(form, "FORM_TYPE", form_type)
    return form


def add_field(form: etree._Element, var: str, value: str) -> None:
    field = etree.SubElement(form, FIELD, {"var": var})
    etree.SubElement(field, VALUE).text = value


def form_type(form: etree._Element) -> str | None:
    """The form's FORM_TYPE value, None if it has none."""
    for field in form.iterchildren(FIELD):
        if field.get("var") == "FORM_TYPE":
            return field.findtext(VALUE)
    return None
