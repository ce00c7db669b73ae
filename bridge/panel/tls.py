"""How the bridge trusts one panel server's certificate.

The panel's installer makes a self-signed certificate, so the system CAs rarely
vouch for it. Three ways to trust it, in order of preference:

- ``tls_fingerprint``: pin the certificate's SHA-256 fingerprint. Pinning
  replaces CA trust entirely (chain and host name are not checked; the exact
  certificate is), which is what a self-signed certificate on an IP needs.
- ``ca_file``: trust the certificate (or the CA that signed it) from a PEM file.
- ``verify_tls=False``: no check at all; allowed, but warned about.

By default the system CAs are used, as for any HTTPS client.
"""

from __future__ import annotations

import logging
import ssl

import aiohttp

from bridge.panel.config import PanelServer

__all__ = ["TlsSetting", "TlsSetupError", "tls_setting"]

logger = logging.getLogger("bridge.panel")

TlsSetting = ssl.SSLContext | aiohttp.Fingerprint | bool


class TlsSetupError(Exception):
    """The server's TLS configuration cannot be used (e.g. an unreadable CA file)."""


def tls_setting(server: PanelServer) -> TlsSetting:
    """What to pass as aiohttp's ``ssl=`` for this server (raises TlsSetupError)."""
    fingerprint = server.fingerprint_bytes
    if fingerprint is not None:
        return aiohttp.Fingerprint(fingerprint)
    if server.ca_file:
        try:
            return ssl.create_default_context(cafile=server.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(
                f"The CA file {server.ca_file!r} configured for panel {server.name!r} cannot "
                f"be loaded ({exc.__class__.__name__}: {exc}). Point ca_file at the panel's "
                "certificate in PEM format, or pin its SHA-256 fingerprint with tls_fingerprint."
            ) from exc
    if not server.verify_tls:
        if server.url.startswith("https:"):
            logger.warning(
                "TLS verification is switched off for panel %s (%s): anyone on the path can "
                "read the account passwords. Pin the certificate with tls_fingerprint instead.",
                server.name,
                server.url,
            )
        return False
    # aiohttp's own verifying context with the system CAs, built once per process: making one
    # per panel server loads the whole CA bundle again each time.
    return True
