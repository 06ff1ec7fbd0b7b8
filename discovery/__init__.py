"""DNS-SD over mDNS: the agent advertises `_tierdeck._tcp.local.`, the console browses. No Qt here.

Agent side::

    adv = Advertiser(node_id, name, tier, port, addresses=["10.0.0.5"], version="0.1.0")
    await adv.async_start()          # probes; renames to "name-2" on a conflict, never raises for it
    await adv.async_update(cfg=3)    # re-announce with changed TXT keys
    await adv.async_stop()           # goodbye packets

The advertiser owns an IPv4-only AsyncZeroconf bound to `interfaces` (default: `addresses`); create it
inside the running loop. The SRV record points at a host name stable across restarts,
`td-<first 12 hex digits of the node id>.local.`, with A records for `addresses`.

TXT (RFC 6763, whole record < 400 bytes, no secrets): `txtvers=1`, `id` (node id), `tier`
(device|edge|cloud), `ver` (agent version), `proto` (data plane, `oip-v2-grpc`), `fp` (certificate
fingerprint, once TLS lands), `cfg` (counter bumped when the node's configuration changes), plus any
extra short keys (e.g. `paired`). Browsers drop, with one log line per advertisement, any record that
`parse_txt` refuses: missing required keys, unknown `txtvers`, duplicate keys, bad UTF-8, over-long
values or record, an absurd port.

Console side::

    browser = Browser(["192.168.1.20"], fleet_file="fleet.txt")
    unsubscribe = browser.subscribe(lambda event: print(event.kind, event.advert))
    await browser.async_start()
    browser.nodes()                  # {key: NodeAdvert}

Records (`NodeAdvert`, frozen) are keyed by node id: a node that comes back with a new address or a
new instance name is the same node, `updated`. Presence only — mDNS records live 120 s or more, so
liveness is the console's job (gRPC health).

Nodes beyond the local segment come from a fleet file and from manual add (`Browser.add_manual`),
merged into the same event stream. The fleet file is either text, one node per line::

    # HOST:PORT [TIER] [NAME...]        blank lines and # comments are ignored
    10.1.0.7:50051 edge  gate camera 1
    [fd00::7]:50051 cloud
    relay.example.org:50051

or JSON: `[{"address": "HOST:PORT", "tier": "edge", "name": "gate"}, ...]` (or `{"nodes": [...]}`).
Such records have no node id until the console connects, so they are keyed `addr:HOST:PORT`; the console
then calls `Browser.merge_identity(address, node_id, ...)`, which re-keys the record to its node id
(a `removed` event for the old key, then `added`/`updated` carrying `previous_key`); if mDNS knows the
same node id, the two become one record.
"""

from __future__ import annotations

from ._advertiser import Advertiser
from ._browser import Browser, all_ipv4_interfaces
from ._fleet import parse_fleet, read_fleet_file, static_advert
from ._records import (
    SERVICE_TYPE,
    TIERS,
    TXT_VERSION,
    NodeAdvert,
    NodeEvent,
    address_key,
    build_txt,
    check_fleet_id,
    encode_txt,
    format_address,
    host_name_for,
    parse_address,
    parse_txt,
)

__all__ = [
    "SERVICE_TYPE",
    "TIERS",
    "TXT_VERSION",
    "Advertiser",
    "Browser",
    "NodeAdvert",
    "NodeEvent",
    "address_key",
    "all_ipv4_interfaces",
    "build_txt",
    "check_fleet_id",
    "encode_txt",
    "format_address",
    "host_name_for",
    "parse_address",
    "parse_fleet",
    "parse_txt",
    "read_fleet_file",
    "static_advert",
]
