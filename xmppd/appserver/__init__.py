"""The push app server: an XMPP component that turns XEP-0357 publishes into APNs and FCM pushes.

xmppd hosts it in-process on push.<domain>, or it runs on its own as a XEP-0114
component against any XMPP server (``python -m xmppd.appserver --config FILE``);
the component logic is the same either way.

- providers.py: what a push is (Notification), what became of it (Result), and
  the Provider protocol every push service implements;
- apns.py: Apple Push Notification service, HTTP/2 with token auth (aioapns);
- fcm.py: Firebase Cloud Messaging HTTP v1 with a service account (pyfcm);
- encryption.py: AES-GCM payload encryption (the Tigase convention, with the real tag).
"""
