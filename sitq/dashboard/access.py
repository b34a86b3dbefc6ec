"""Access rules that need no web framework (the command line checks them before
anything is imported from the dashboard's extra)."""

from __future__ import annotations

import ipaddress
import secrets


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (where only this machine connects)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A fresh random token (what ``sitq dashboard --token generate`` uses)."""
    return secrets.token_urlsafe(24)
