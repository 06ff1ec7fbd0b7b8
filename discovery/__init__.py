"""DNS-SD over mDNS: the agent advertises `_tierdeck._tcp.local.`, the console browses. No Qt here."""

from __future__ import annotations
