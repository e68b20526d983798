"""Credentials and API endpoint for the Google Drive store.

Service account (the right choice for servers). In the Google Cloud console: enable the Drive API, create a service
account, add a JSON key, and share the federation's folder with the account's ``client_email`` as Editor. Then set
``MEDHEAVEN_DRIVE_SERVICE_ACCOUNT=/path/key.json`` (readable by the service user only). A service account has
no Drive storage quota of its own (uploads fail with ``storageQuotaExceeded``): put the federation's folder in a
shared drive and add the account to it as Content manager; the store then lists that drive's files.
``MEDHEAVEN_DRIVE_TOKEN_URI`` replaces the key file's ``token_uri``; the key reaches pydrive2 as a dict, so nothing
secret is written anywhere.

User account (OAuth). The store never opens a browser; it uses credentials saved by a one-time sign-in:

1. Create an OAuth client of type "Desktop app" in the Cloud console and download ``client_secrets.json``.
2. Write a pydrive2 ``settings.yaml``::

       client_config_backend: file
       client_config_file: /etc/medheaven/client_secrets.json
       save_credentials: true
       save_credentials_backend: file
       save_credentials_file: /etc/medheaven/drive-credentials.json
       get_refresh_token: true
       oauth_scope: [https://www.googleapis.com/auth/drive]

3. On a machine with a browser, sign in once:
   ``python -c "from pydrive2.auth import GoogleAuth; GoogleAuth('settings.yaml').LocalWebserverAuth()"``.
4. Copy ``drive-credentials.json`` (it holds a refresh token: mode 600) to the server and set
   ``MEDHEAVEN_DRIVE_OAUTH_SETTINGS=/etc/medheaven/settings.yaml``. Refreshed tokens are saved back to it.

Where requests go is configuration too (``MEDHEAVEN_DRIVE_API_ROOT``): :class:`EndpointGoogleAuth` overrides only
``GoogleAuth.Authorize()`` so that the Drive v2 service is built from the discovery document bundled with
google-api-python-client with its root URL replaced. The default root is Google's, so production runs exactly the
same code path as the tests, which point the root at a local test double of Drive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from googleapiclient.discovery import build_from_document
from googleapiclient.discovery_cache import get_static_doc
from pydrive2.auth import GoogleAuth
from pydrive2.settings import InvalidConfigError, LoadSettingsFile, SettingsError

from medheaven.errors import ConfigurationError
from medheaven.settings import Settings

DRIVE_SCOPE = "https://www.googleapis.com/auth/drive"


@dataclass(frozen=True)
class DriveIdentity:
    """Who the store acts as, for error messages that say which credential to fix and whom to share with."""

    #: e.g. "service account fed@proj.iam.gserviceaccount.com (key file /etc/medheaven/sa.json)"
    credential: str
    #: the address the folder must be shared with
    share_with: str


def drive_v2_document(api_root: str) -> dict[str, Any]:
    """The bundled Drive v2 discovery document, re-rooted at ``api_root``.

    ``client_options={"api_endpoint": ...}`` is not enough: googleapiclient derives upload URLs from ``rootUrl``
    (``<root>upload/drive/v2/...``), so the root itself must change, and both roots in case mTLS is chosen.
    """
    raw = get_static_doc("drive", "v2")
    if raw is None:  # pragma: no cover - only if google-api-python-client is installed without its documents
        raise ConfigurationError("google-api-python-client has no bundled drive v2 document; reinstall it")
    doc: dict[str, Any] = json.loads(raw)
    root = api_root if api_root.endswith("/") else api_root + "/"
    doc["rootUrl"] = root
    doc["mtlsRootUrl"] = root
    doc["baseUrl"] = root + doc["servicePath"]
    return doc


# pydrive2 ships no type information, so GoogleAuth is Any to mypy.
class EndpointGoogleAuth(GoogleAuth):  # type: ignore[misc]
    """``GoogleAuth`` whose Drive service talks to a configurable API root; everything else is pydrive2's."""

    # declared for mypy only (an annotation creates no class attribute): pydrive2 stores it through a descriptor
    http: Any

    def __init__(self, *, api_root: str, settings: dict[str, Any], http_timeout: float | None) -> None:
        # settings_file=None: never pick up a stray ./settings.yaml from the working directory
        super().__init__(settings_file=None, settings=settings, http_timeout=http_timeout)
        self.api_root = api_root

    def Authorize(self) -> None:  # noqa: N802 - pydrive2's method name
        # Unlike pydrive2, no "token expired" refusal here: oauth2client refreshes on the first request (or on a
        # 401), and DriveStore refreshes ahead of each operation, so pydrive2 never falls back to a browser flow.
        http: Any = self.http
        if http is None:
            # pydrive2's builder stops httplib2 treating Drive's "308 Resume Incomplete" as a redirect
            http = self._build_http()
        self.http = self.credentials.authorize(http)
        self.service = build_from_document(drive_v2_document(self.api_root), http=self.http)


def build_drive_auth(settings: Settings, *, http_timeout: float | None) -> tuple[GoogleAuth, DriveIdentity]:
    """An authorised ``GoogleAuth`` from settings. Makes no request for a service account (tokens are lazy)."""
    if settings.drive_service_account is not None:
        return _service_account_auth(settings, http_timeout)
    if settings.drive_oauth_settings is not None:
        return _user_auth(settings, http_timeout)
    raise ConfigurationError(
        "the Drive store needs credentials: set MEDHEAVEN_DRIVE_SERVICE_ACCOUNT to a service-account JSON key "
        "file, or MEDHEAVEN_DRIVE_OAUTH_SETTINGS to a pydrive2 settings.yaml with saved user credentials"
    )


def _service_account_auth(settings: Settings, http_timeout: float | None) -> tuple[GoogleAuth, DriveIdentity]:
    path = settings.drive_service_account
    assert path is not None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read the service-account key file {path}: {exc}") from exc
    except ValueError as exc:
        raise ConfigurationError(f"{path} is not a JSON service-account key file ({exc})") from exc
    required = ("type", "client_email", "private_key", "private_key_id", "client_id")
    if not isinstance(info, dict) or info.get("type") != "service_account" or not all(map(info.get, required)):
        raise ConfigurationError(
            f"{path} is not a service-account key (it needs type=service_account and {', '.join(required[1:])}); "
            "download a JSON key for the service account from the Google Cloud console"
        )
    try:
        # checked here so that a damaged key reads as a configuration error, whichever crypto backend
        # oauth2client picks (pyOpenSSL raises its own error type)
        load_pem_private_key(str(info["private_key"]).encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"the private_key in {path} is not a usable PEM key ({exc})") from exc
    if settings.drive_token_uri:
        info["token_uri"] = settings.drive_token_uri
    email = str(info["client_email"])
    identity = DriveIdentity(credential=f"service account {email} (key file {path})", share_with=email)
    auth = EndpointGoogleAuth(
        api_root=settings.drive_api_root,
        # a dict, not the file path: the token_uri override must not be written anywhere
        settings={
            "client_config_backend": "service",
            "service_config": {"client_json_dict": info},
            "oauth_scope": [DRIVE_SCOPE],
        },
        http_timeout=http_timeout,
    )
    try:
        auth.ServiceAuth()
    except (ValueError, KeyError, InvalidConfigError) as exc:
        raise ConfigurationError(f"{identity.credential} cannot be used: {exc!r}") from exc
    return auth, identity


def _user_auth(settings: Settings, http_timeout: float | None) -> tuple[GoogleAuth, DriveIdentity]:
    path = settings.drive_oauth_settings
    assert path is not None
    try:
        # loaded here because GoogleAuth silently falls back to its defaults when the file is unreadable
        loaded = LoadSettingsFile(str(path))
    except SettingsError as exc:
        raise ConfigurationError(f"cannot read the pydrive2 settings file {path}: {exc}") from exc
    if not isinstance(loaded, dict) or not loaded.get("save_credentials_file"):
        raise ConfigurationError(
            f"{path} must set save_credentials: true, save_credentials_backend: file and save_credentials_file "
            "(the store signs in headless from saved credentials)"
        )
    identity = DriveIdentity(
        credential=f"user credentials {loaded['save_credentials_file']} (settings file {path})",
        share_with="the Google account whose credentials were saved",
    )
    try:
        auth = EndpointGoogleAuth(api_root=settings.drive_api_root, settings=loaded, http_timeout=http_timeout)
        auth.LoadCredentialsFile(str(loaded["save_credentials_file"]))
    except (InvalidConfigError, OSError) as exc:
        raise ConfigurationError(f"{identity.credential}: {exc}") from exc
    if auth.credentials is None:
        raise ConfigurationError(
            f"no saved credentials in {loaded['save_credentials_file']}: sign in once on a machine with a "
            "browser as described in medheaven.store.drive_auth, then copy the credentials file here"
        )
    if settings.drive_token_uri:
        auth.credentials.token_uri = settings.drive_token_uri
    auth.Authorize()
    return auth, identity
