"""xmppd: an XMPP server for phones that sleep."""

__version__ = "0.1.0"
