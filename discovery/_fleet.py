"""Nodes beyond the local segment: the fleet file and addresses typed in by the operator."""

from __future__ import annotations

import json
from pathlib import Path

from ._records import TIERS, NodeAdvert, Source, format_address, parse_address


def static_advert(address: str, tier: str = "", name: str = "", source: Source = "manual") -> NodeAdvert:
    """A record for a node known only by `HOST:PORT` (its id comes later, from the console's connection)."""
    host, port = parse_address(address)
    if tier and tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}: expected one of {', '.join(TIERS)}")
    return NodeAdvert(
        node_id="",
        name=name.strip() or format_address(host, port),
        tier=tier,
        addresses=(host,),
        port=port,
        version="",
        proto="",
        source=source,
    )


def parse_fleet(text: str, origin: str = "fleet file") -> list[NodeAdvert]:
    """Parse a fleet file's text (JSON or `HOST:PORT [TIER] [NAME]` lines); raises ValueError naming the line."""
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        return _parse_fleet_json(stripped, origin)
    adverts: list[NodeAdvert] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        address, _, rest = line.partition(" ")
        rest = rest.strip()
        tier, _, name = rest.partition(" ")
        if tier not in TIERS:
            tier, name = "", rest
        try:
            adverts.append(static_advert(address, tier, name, source="fleet-file"))
        except ValueError as exc:
            raise ValueError(f"{origin}, line {number}: {exc}") from None
    return _no_duplicates(adverts, origin)


def _parse_fleet_json(text: str, origin: str) -> list[NodeAdvert]:
    """Parse the JSON form: a list (or {"nodes": [...]}) of {"address", "tier"?, "name"?} objects."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{origin}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{origin}: JSON nested too deeply") from None
    if isinstance(data, dict):
        data = data.get("nodes")
    if not isinstance(data, list):
        raise ValueError(f'{origin}: expected a list of nodes or {{"nodes": [...]}}')
    adverts: list[NodeAdvert] = []
    for index, item in enumerate(data):
        if isinstance(item, str):
            item = {"address": item}
        if not isinstance(item, dict) or not isinstance(item.get("address"), str):
            raise ValueError(f"{origin}, node {index}: expected {{\"address\": \"HOST:PORT\", ...}}")
        tier, name = item.get("tier", ""), item.get("name", "")
        if not isinstance(tier, str) or not isinstance(name, str):
            raise ValueError(f"{origin}, node {index}: tier and name must be strings")
        try:
            adverts.append(static_advert(item["address"], tier, name, source="fleet-file"))
        except ValueError as exc:
            raise ValueError(f"{origin}, node {index}: {exc}") from None
    return _no_duplicates(adverts, origin)


def _no_duplicates(adverts: list[NodeAdvert], origin: str) -> list[NodeAdvert]:
    """Refuse a fleet file that lists one address twice (which entry would be meant is unclear)."""
    seen: set[str] = set()
    for advert in adverts:
        if advert.address in seen:
            raise ValueError(f"{origin}: {advert.address} is listed twice")
        seen.add(advert.address)
    return adverts


def read_fleet_file(path: str | Path) -> list[NodeAdvert]:
    """Read and parse a fleet file (blocking: call it from an executor inside the event loop)."""
    path = Path(path)
    return parse_fleet(path.read_text(encoding="utf-8"), origin=str(path))
