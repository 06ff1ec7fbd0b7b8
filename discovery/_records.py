"""Advertisement records: the TXT schema, its strict parser and the frozen records that leave discovery/."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

SERVICE_TYPE = "_tierdeck._tcp.local."
TXT_VERSION = "1"
TIERS = ("device", "edge", "cloud")
DEFAULT_PROTO = "oip-v2-grpc"

# RFC 6763 §6.2 asks to keep TXT small; 400 bytes leaves room in one 512-byte message.
MAX_TXT_BYTES = 400
MAX_KEY_CHARS = 9
MAX_INSTANCE_BYTES = 63
# Instance names are cut to this so that zeroconf's rename suffix ("-2", "-10"...) still fits in 63 bytes.
MAX_NAME_BYTES = 56

# Longest value accepted per known key; anything longer is a malformed (or hostile) record.
_MAX_VALUE_CHARS = {"txtvers": 3, "id": 64, "tier": 8, "ver": 32, "proto": 32, "fp": 100, "cfg": 20, "fleet": 32}
# `fleet` (optional, since txtvers 1 — older browsers ignore it): the scope a node belongs to, so two fleets
# (or the demo and a stray node) on one segment stay apart. A browser scoped to a fleet shows only its nodes.
MAX_FLEET_ID_CHARS = 32
_ID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]*\Z")
_TOKEN_RE = re.compile(r"[\x21-\x7e]*\Z")  # printable ASCII, no spaces
_FP_RE = re.compile(r"[0-9A-Za-z:+/=_-]*\Z")
_REQUIRED = ("txtvers", "id", "tier", "ver", "proto")

Source = Literal["mdns", "fleet-file", "manual"]
EventKind = Literal["added", "updated", "removed"]


@dataclass(frozen=True)
class NodeAdvert:
    """One node as discovery knows it: what it claims about itself and where it can be reached."""

    node_id: str
    name: str
    tier: str
    addresses: tuple[str, ...]
    port: int
    version: str = ""
    proto: str = DEFAULT_PROTO
    fingerprint: str = ""
    cfg: int = 0
    source: Source = "mdns"
    host: str = ""
    txt: tuple[tuple[str, str | None], ...] = ()
    fleet: str = ""

    def txt_dict(self) -> dict[str, str | None]:
        """The raw TXT as a dict (keys lower-case; None for a key without `=`)."""
        return dict(self.txt)

    @property
    def key(self) -> str:
        """The key this record is stored under: the node id, or `addr:HOST:PORT` while the id is unknown."""
        return self.node_id if self.node_id else address_key(self.addresses[0] if self.addresses else "", self.port)

    @property
    def address(self) -> str:
        """The first address as `HOST:PORT` (IPv6 in brackets), or "" when there is none."""
        return format_address(self.addresses[0], self.port) if self.addresses else ""

    def as_json(self) -> dict[str, object]:
        """A plain dict for JSON output."""
        return {
            "id": self.node_id,
            "key": self.key,
            "name": self.name,
            "tier": self.tier,
            "addresses": list(self.addresses),
            "port": self.port,
            "version": self.version,
            "proto": self.proto,
            "fingerprint": self.fingerprint,
            "cfg": self.cfg,
            "fleet": self.fleet,
            "source": self.source,
            "host": self.host,
            "txt": self.txt_dict(),
        }


@dataclass(frozen=True)
class NodeEvent:
    """A change in the set of known nodes; `previous_key` is set when a record was re-keyed by identity."""

    kind: EventKind
    advert: NodeAdvert
    previous_key: str | None = None


def check_fleet_id(fleet_id: str) -> str:
    """A fleet id as advertised (letters, digits, `.`, `_`, `-`; at most 32); raises ValueError otherwise."""
    if not fleet_id or len(fleet_id) > MAX_FLEET_ID_CHARS or not _ID_RE.match(fleet_id):
        raise ValueError(f"bad fleet id {fleet_id[:40]!r}: use 1-{MAX_FLEET_ID_CHARS} letters, digits, '.', '_' "
                         "or '-', starting with a letter or digit")
    return fleet_id


def address_key(host: str, port: int) -> str:
    """The key of a record whose node id is not known yet."""
    return "addr:" + format_address(host, port)


def format_address(host: str, port: int) -> str:
    """`HOST:PORT`, with IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> tuple[str, int]:
    """Split `HOST:PORT` / `[V6]:PORT` into (host, port); raises ValueError with the reason."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
        ipaddress.IPv6Address(host)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bad address {text!r}: expected HOST:PORT")
        if ":" in host:
            raise ValueError(f"bad address {text!r}: put IPv6 literals in brackets")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad address {text!r}: port must be 1-65535")
    if not host or any(c.isspace() or c in "/@?#" for c in host):
        raise ValueError(f"bad address {text!r}: bad host")
    return host.lower(), int(port_text)


def host_name_for(node_id: str) -> str:
    """The stable mDNS host name of a node: `td-<first 12 hex digits of its id>.local.`."""
    hex_digits = re.sub(r"[^0-9a-f]", "", node_id.lower())
    if len(hex_digits) < 12:
        hex_digits = hashlib.sha256(node_id.encode()).hexdigest()
    return f"td-{hex_digits[:12]}.local."


def clip_name(name: str) -> str:
    """An instance name cut to MAX_NAME_BYTES of UTF-8 (on a character boundary), never empty."""
    name = " ".join(name.split()) or "tierdeck-node"
    data = name.encode()[:MAX_NAME_BYTES]
    return data.decode("utf-8", "ignore").rstrip() or "tierdeck-node"


def encode_txt(pairs: Iterable[tuple[str, str | None]]) -> bytes:
    """Wire-format TXT rdata (length-prefixed strings) for the given pairs; raises ValueError if too long."""
    out = bytearray()
    for key, value in pairs:
        item = key.encode() if value is None else f"{key}={value}".encode()
        if len(item) > 255:
            raise ValueError(f"TXT entry {key!r} is {len(item)} bytes, more than 255")
        out.append(len(item))
        out += item
    return bytes(out or b"\x00")


def build_txt(
    node_id: str,
    tier: str,
    version: str,
    proto: str = DEFAULT_PROTO,
    fingerprint: str = "",
    cfg: int = 0,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The TXT mapping a node advertises; validated with `parse_txt` so a node never sends what browsers drop."""
    txt = {"txtvers": TXT_VERSION, "id": node_id, "tier": tier, "ver": version, "proto": proto}
    if fingerprint:
        txt["fp"] = fingerprint
    txt["cfg"] = str(cfg)
    for key, value in (extra or {}).items():
        if key.lower() in ("txtvers", "id", "tier", "ver", "proto"):
            raise ValueError(f"TXT key {key!r} is set by the advertiser itself")
        txt[key.lower()] = str(value)
    parse_txt(txt)
    return txt


def _pairs_from_wire(data: bytes) -> list[tuple[bytes, bytes | None]]:
    """Split TXT rdata into (key, value) byte pairs; raises ValueError on framing errors."""
    pairs: list[tuple[bytes, bytes | None]] = []
    pos = 0
    while pos < len(data):
        length = data[pos]
        end = pos + 1 + length
        if end > len(data):
            raise ValueError(f"TXT string at byte {pos} claims {length} bytes, only {len(data) - pos - 1} left")
        item = data[pos + 1 : end]
        pos = end
        if not item:
            continue  # an empty string is how an empty TXT record is written
        key, sep, value = item.partition(b"=")
        pairs.append((key, value if sep else None))
    return pairs


def _pairs_from_mapping(
    properties: Mapping[str, str | None] | Mapping[bytes, bytes | None],
) -> list[tuple[bytes, bytes | None]]:
    """Normalise a decoded mapping into (key, value) byte pairs."""
    pairs: list[tuple[bytes, bytes | None]] = []
    for key, value in properties.items():
        key_bytes = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else bytes(key)
        if value is None:
            pairs.append((key_bytes, None))
        elif isinstance(value, str):
            pairs.append((key_bytes, value.encode("utf-8", "surrogateescape")))
        else:
            pairs.append((key_bytes, bytes(value)))
    return pairs


def parse_txt(
    properties: bytes | Mapping[str, str | None] | Mapping[bytes, bytes | None],
    *,
    name: str = "",
    port: int | None = None,
    addresses: Iterable[str] = (),
    host: str = "",
) -> NodeAdvert:
    """Validate a node's TXT (wire bytes or a mapping) and return its record; raises ValueError with the reason.

    TXT is a hint from the network, never trusted: keys must be printable ASCII without `=` and unique
    (case-insensitively — stricter than RFC 6763, because two `id`s are ambiguous); the whole record at
    most 400 bytes and UTF-8; `txtvers` must be 1; `id`, `tier`, `ver`, `proto` are required and
    well-formed. Unknown keys are kept in `txt` and otherwise ignored.
    """
    if isinstance(properties, bytes | bytearray | memoryview):
        raw = bytes(properties)
        if len(raw) > MAX_TXT_BYTES:
            raise ValueError(f"TXT is {len(raw)} bytes, more than {MAX_TXT_BYTES}")
        pairs = _pairs_from_wire(raw)
    elif isinstance(properties, Mapping):
        pairs = _pairs_from_mapping(properties)
        size = sum(1 + len(k) + (0 if v is None else 1 + len(v)) for k, v in pairs)
        if size > MAX_TXT_BYTES:
            raise ValueError(f"TXT is {size} bytes, more than {MAX_TXT_BYTES}")
        if any(len(k) + (0 if v is None else 1 + len(v)) > 255 for k, v in pairs):
            raise ValueError("TXT entry longer than 255 bytes")
    else:
        raise ValueError(f"TXT of unexpected type {type(properties).__name__}")

    txt: dict[str, str | None] = {}
    for key_bytes, value_bytes in pairs:
        if not key_bytes:
            raise ValueError("TXT entry with an empty key")
        if any(b < 0x20 or b > 0x7E for b in key_bytes) or b"=" in key_bytes:
            raise ValueError(f"TXT key {key_bytes[:20]!r} is not printable ASCII")
        key = key_bytes.decode("ascii").lower()
        if key in txt:
            raise ValueError(f"duplicate TXT key {key!r}")
        if value_bytes is None:
            txt[key] = None
            continue
        try:
            txt[key] = value_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"TXT value of {key!r} is not UTF-8") from exc

    if "txtvers" not in txt:
        raise ValueError("TXT has no txtvers")
    for key in _REQUIRED:
        if key not in txt:
            raise ValueError(f"TXT has no {key!r}")
        if txt[key] is None:
            raise ValueError(f"TXT key {key!r} has no '=' value")
    for key, limit in _MAX_VALUE_CHARS.items():
        value = txt.get(key)
        if value is not None and len(value) > limit:
            raise ValueError(f"TXT value of {key!r} is {len(value)} chars, more than {limit}")
    if txt["txtvers"] != TXT_VERSION:
        raise ValueError(f"unknown txtvers {txt['txtvers']!r}")

    node_id = txt["id"] or ""
    if not _ID_RE.match(node_id):
        raise ValueError(f"bad node id {node_id[:70]!r}")
    tier = txt["tier"] or ""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier[:20]!r}")
    version, proto = txt["ver"] or "", txt["proto"] or ""
    if not version or not _TOKEN_RE.match(version):
        raise ValueError(f"bad agent version {version[:40]!r}")
    if not proto or not _TOKEN_RE.match(proto):
        raise ValueError(f"bad protocol {proto[:40]!r}")
    fingerprint = txt.get("fp") or ""
    if not _FP_RE.match(fingerprint):
        raise ValueError("bad certificate fingerprint")
    cfg_text = txt.get("cfg")
    if cfg_text is None and "cfg" in txt:
        raise ValueError("TXT key 'cfg' has no '=' value")
    if cfg_text is not None and not (cfg_text.isascii() and cfg_text.isdigit()):
        raise ValueError(f"bad cfg counter {cfg_text[:20]!r}")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"absurd port {port}")
    fleet = txt.get("fleet")
    if "fleet" in txt:
        if fleet is None:
            raise ValueError("TXT key 'fleet' has no '=' value")
        check_fleet_id(fleet)

    return NodeAdvert(
        node_id=node_id,
        name=name,
        tier=tier,
        addresses=tuple(addresses),
        port=port or 0,
        version=version,
        proto=proto,
        fingerprint=fingerprint,
        cfg=int(cfg_text) if cfg_text else 0,
        source="mdns",
        host=host,
        txt=tuple(txt.items()),
        fleet=fleet or "",
    )
