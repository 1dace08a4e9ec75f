"""Firebase Cloud Messaging, HTTP v1 API with a service account, through pyfcm.

One ``FcmProvider`` per Firebase project/app. The service account's key signs a JWT
bearer grant sent to its ``token_uri`` (google-auth); the access token is reused until
it is about to expire. pyfcm is blocking (requests), so pushes run in a thread pool of
``max_workers`` threads; each push has a deadline, and a push still waiting for a thread
when its deadline passes is dropped from the queue (the app server sees "retry").

What the app receives
=====================

A data message (no ``notification`` block: the app decides what to show), at Android
priority high for every kind, so that Doze does not hold it back. The request::

    {"message": {"token": "<registration token>",
                 "data": {"kind": "message", "account": "<collapse id>",
                          "message-count": "3", "pending-subscription-count": "0"},
                 "android": {"priority": "high", "ttl": "86400s", "collapse_key": "<collapse id>"}},
     "validate_only": false}

and the app's ``RemoteMessage.getData()`` is the ``data`` map: the fields of
providers.event_fields(), every value a string:

- "message": kind, account, message-count, pending-subscription-count, and sender /
  body only when the XMPP server included them; ttl one day; collapse_key = collapse id.
- "call": kind "call", account, call-id, caller; ttl 30 s; collapse_key = collapse id
  + "-call".
- "call-ended": kind "call-ended", account, call-id, caller; ttl 60 s; the same
  collapse_key as the call, so an undelivered call push is replaced by its end.

``account`` is the collapse id; for Conversations (registered the p2 way) it must be
p2's account hash, which Conversations compares to know which account to reconnect
(see providers.py). Encrypted (the client gave a key): ``data`` is only
``{"account": …, "encrypted": …, "iv": …}`` (encryption.py).

FCM answers → Result
====================
200 → delivered; 404 or errorCode UNREGISTERED → unregistered; 429 and 5xx → retry,
with ``retry_after`` from Retry-After (seconds or HTTP date) capped at
``max_retry_after``; a refused or broken connection, a timeout, an unreachable token
endpoint → retry; 401 → one new access token and one more try, then rejected; anything
else (400 INVALID_ARGUMENT, 403 SENDER_ID_MISMATCH …) → rejected.

Around pyfcm 2.1.1
==================
``FCMNotification.send_request`` sleeps for Retry-After and calls itself again with no
limit, and again on every expired token; its requests session retries 502/503 with
exponential back-off; the token request has google-auth's 120 s timeout. ``_BoundedFCM``
sends once (once more after a 401), never sleeps, mounts an adapter without retries,
and asks the token endpoint with a short timeout. pyfcm still builds the payload and
the endpoint URL (``FCM_END_POINT_BASE``, overridable here as ``endpoint``).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import google.auth.exceptions
import google.auth.transport.requests
import requests
from google.oauth2 import service_account as google_service_account
from pyfcm import FCMNotification
from pyfcm.baseapi import BaseAPI
from requests.adapters import HTTPAdapter

from .encryption import encrypt_payload
from .providers import Notification, Result, collapse_key, encrypted_fields, event_fields, ttl_for

__all__ = ["FcmProvider", "FCM_SCOPE"]

log = logging.getLogger("xmppd.appserver.fcm")

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
CONNECT_TIMEOUT = 5.0


class FcmProvider:
    """Pushes to the Android apps of one Firebase project."""

    name = "fcm"

    def __init__(self, app_name: str, service_account: dict[str, Any] | str | os.PathLike[str],
                 project_id: str | None, *, endpoint: str | None = None, token_uri: str | None = None,
                 max_workers: int = 4, timeout: float = 10.0, max_retry_after: float = 3600.0) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        info = _load_service_account(service_account)
        if token_uri:
            info = {**info, "token_uri": token_uri}
        project = project_id or info.get("project_id")
        if not project:
            raise ValueError(f"FCM app {app_name!r}: no project id (neither given nor in the service account)")
        try:
            credentials = google_service_account.Credentials.from_service_account_info(info, scopes=[FCM_SCOPE])
        except (ValueError, KeyError) as error:
            raise ValueError(f"FCM app {app_name!r}: unusable service account: {error}") from None
        self.app_name = app_name
        self.project_id = project
        self.timeout = timeout
        self.max_retry_after = max_retry_after
        # token request (google-auth tries up to 3 times), the push, and one more after a 401
        self.deadline = 4 * timeout + 2 * CONNECT_TIMEOUT
        self._fcm = _BoundedFCM(credentials=credentials, project_id=project,
                                endpoint_base=(endpoint or BaseAPI.FCM_END_POINT_BASE).rstrip("/"),
                                pool_size=max_workers, token_timeout=timeout)
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"fcm-{app_name}")
        self._closed = False

    @property
    def endpoint(self) -> str:
        return self._fcm.fcm_end_point

    async def send(self, notification: Notification) -> Result:
        if self._closed:
            return Result("retry", "the FCM provider is shut down")
        loop = asyncio.get_running_loop()
        try:
            work = loop.run_in_executor(self._executor, self._send_blocking, notification)
            return await asyncio.wait_for(work, self.deadline)
        except TimeoutError:
            return Result("retry", f"no answer from FCM within {self.deadline:g} s")
        except RuntimeError as error:   # the executor was shut down meanwhile
            return Result("retry", f"the FCM provider is shut down ({error})")
        except Exception as error:
            log.exception("FCM app %s: unexpected failure", self.app_name)
            return Result("rejected", f"unexpected failure: {type(error).__name__}: {error}")

    async def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- building the request ------------------------------------------------------------

    def message_for(self, notification: Notification) -> dict[str, Any]:
        """The pyfcm keyword arguments (data_payload, android_config) for a notification."""
        n = notification
        if n.encryption_key is not None:
            fields: dict[str, Any] = {"account": n.collapse_id, **encrypt_payload(n.encryption_key, encrypted_fields(n))}
        else:
            fields = event_fields(n)
        suffix = "" if n.kind == "message" else "-call"
        android = {"priority": "high", "ttl": f"{ttl_for(n)}s", "collapse_key": collapse_key(n.collapse_id, suffix)}
        return {"data_payload": {key: str(value) for key, value in fields.items()}, "android_config": android}

    # -- in a worker thread --------------------------------------------------------------

    def _send_blocking(self, notification: Notification) -> Result:
        try:
            payload = self._fcm.parse_payload(fcm_token=notification.token, **self.message_for(notification))
        except Exception as error:
            log.exception("FCM app %s: cannot build a push", self.app_name)
            return Result("rejected", f"cannot build the push: {error}")
        try:
            response = self._fcm.send_request(payload, timeout=(CONNECT_TIMEOUT, self.timeout))
        except google.auth.exceptions.RefreshError as error:
            if getattr(error, "retryable", False):
                return Result("retry", f"token endpoint: {_short(error)}")
            return Result("rejected", f"token endpoint refused the service account: {_short(error)}")
        except google.auth.exceptions.TransportError as error:
            return Result("retry", f"token endpoint unreachable: {_short(error)}")
        except requests.RequestException as error:
            return Result("retry", f"FCM unreachable ({type(error).__name__}: {_short(error)})")
        return self._result(response)

    def _result(self, response: requests.Response) -> Result:
        code = response.status_code
        if code == 200:
            try:
                name = str(response.json().get("name", ""))
            except (ValueError, AttributeError):
                name = ""
            return Result("delivered", name)
        status, error_code, message = _error_details(response)
        reason = f"{code} {error_code or status}".strip() + (f": {message}" if message else "")
        if error_code == "UNREGISTERED" or code == 404:
            return Result("unregistered", reason)
        if code == 429 or code >= 500:
            return Result("retry", reason, retry_after=self._retry_after(response))
        return Result("rejected", reason)

    def _retry_after(self, response: requests.Response) -> float | None:
        value = response.headers.get("Retry-After")
        if not value:
            return None
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            seconds = when.timestamp() - time.time()
        return min(max(seconds, 0.0), self.max_retry_after)


class _TimeoutRequest(google.auth.transport.requests.Request):
    """google-auth's requests transport with a short default timeout (its own is 120 s)."""

    def __init__(self, session: requests.Session, timeout: float) -> None:
        super().__init__(session)
        self._timeout = timeout

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):  # type: ignore[override]
        return super().__call__(url, method=method, body=body, headers=headers,
                                timeout=timeout or (CONNECT_TIMEOUT, self._timeout), **kwargs)


class _BoundedFCM(FCMNotification):
    """pyfcm without its unbounded retries: one POST (one more after a 401), no sleeping."""

    def __init__(self, *, credentials: Any, project_id: str, endpoint_base: str, pool_size: int,
                 token_timeout: float) -> None:
        adapter = HTTPAdapter(max_retries=0, pool_connections=1, pool_maxsize=pool_size)
        super().__init__(credentials=credentials, project_id=project_id, adapter=adapter)
        self.FCM_END_POINT_BASE = endpoint_base
        self._fcm_end_point = f"{endpoint_base}/{project_id}/messages:send"   # the given project wins
        token_session = requests.Session()
        token_session.mount("http://", HTTPAdapter(max_retries=0))
        token_session.mount("https://", HTTPAdapter(max_retries=0))
        self._token_request = _TimeoutRequest(token_session, token_timeout)
        self._token_lock = threading.Lock()
        self._refused_token: str | None = None

    def _get_access_token(self) -> str:
        with self._token_lock:
            credentials = self.credentials
            if not credentials.valid or credentials.token == self._refused_token:
                credentials.refresh(self._token_request)
            return credentials.token

    def send_request(self, payload: bytes | None = None, timeout: Any = None) -> requests.Response:
        token = self._get_access_token()
        response = self._post(payload, token, timeout)
        if response.status_code == 401:
            with self._token_lock:
                self._refused_token = token
            response = self._post(payload, self._get_access_token(), timeout)
        return response

    def _post(self, payload: bytes | None, token: str, timeout: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        return self.requests_session.post(self.fcm_end_point, data=payload, headers=headers, timeout=timeout)


def _load_service_account(service_account: dict[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    if isinstance(service_account, dict):
        return dict(service_account)
    try:
        with open(service_account, encoding="utf-8") as f:
            info = json.load(f)
    except OSError as error:
        raise ValueError(f"cannot read the FCM service account file: {error}") from None
    except ValueError as error:
        raise ValueError(f"the FCM service account file is not JSON: {error}") from None
    if not isinstance(info, dict):
        raise ValueError("the FCM service account file must hold a JSON object")
    return info


def _short(error: BaseException, limit: int = 300) -> str:
    text = str(error)
    return text if len(text) <= limit else text[:limit] + "…"


def _error_details(response: requests.Response) -> tuple[str, str, str]:
    """(status, FCM errorCode, message) of an FCM v1 error answer; empty strings where absent."""
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        return "", "", response.text[:200]
    if not isinstance(error, dict):
        return "", "", str(error)[:200]
    error_code = ""
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("errorCode"):
            error_code = str(detail["errorCode"])
            break
    return str(error.get("status", "")), error_code, str(error.get("message", ""))[:200]
