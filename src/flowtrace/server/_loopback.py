"""Which host names are this machine's own: `localhost` and loopback addresses.

Used twice: `flowtrace serve` listens without an API key only on such an address, and a
keyless server serves only requests whose `Host` names one (`_keyless_guard`). Standard
library only, so the CLI can ask without fastapi installed.
"""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str) -> bool:
    """`localhost`, an address in 127.0.0.0/8, or `::1` (bracketed or not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost could resolve anywhere
