"""discovery/ without the network: the TXT parser (also fuzzed), fleet files, merging and events."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery import (
    Advertiser,
    Browser,
    NodeAdvert,
    NodeEvent,
    build_txt,
    encode_txt,
    host_name_for,
    parse_address,
    parse_fleet,
    parse_txt,
)

NODE_ID = "3f2b8c1e-6a4d-4e7b-9c0f-1d2e3f4a5b6c"
GOOD = {"txtvers": "1", "id": NODE_ID, "tier": "edge", "ver": "0.1.0", "proto": "oip-v2-grpc"}


def wire(*items: bytes) -> bytes:
    """TXT rdata from raw strings (length-prefixed, as on the wire)."""
    return b"".join(bytes([len(item)]) + item for item in items)


def good_items(**override: bytes | None) -> list[bytes]:
    """The valid TXT as raw strings, with keys replaced (None drops a key)."""
    values: dict[str, bytes | None] = {k: v.encode() for k, v in GOOD.items()}
    values.update(override)
    return [k.encode() + b"=" + v for k, v in values.items() if v is not None]


def test_parse_txt_reads_a_valid_record_from_wire_and_mapping() -> None:
    extra = wire(*good_items(), b"fp=sha256:ab12", b"cfg=7", b"paired=0", b"future=x", b"flag")
    advert = parse_txt(extra, name="gate", port=50051, addresses=["10.0.0.5"], host="td-3f2b8c1e6a4d.local.")
    assert (advert.node_id, advert.tier, advert.version, advert.proto) == (NODE_ID, "edge", "0.1.0", "oip-v2-grpc")
    assert (advert.fingerprint, advert.cfg, advert.port, advert.addresses) == ("sha256:ab12", 7, 50051, ("10.0.0.5",))
    assert advert.txt_dict()["future"] == "x" and advert.txt_dict()["flag"] is None
    assert advert.key == NODE_ID and advert.source == "mdns"
    assert parse_txt(GOOD).node_id == NODE_ID
    assert parse_txt({k.encode(): v.encode() for k, v in GOOD.items()}).tier == "edge"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (wire(*good_items(id=None)), "no 'id'"),
        (wire(*good_items(), b"pad=" + b"x" * 250, b"pad2=" + b"y" * 100), "more than 400"),
        (wire(*good_items(ver=b"\xff\xfe")), "not UTF-8"),
        (wire(*good_items(txtvers=b"2")), "unknown txtvers"),
        (wire(*good_items(txtvers=None)), "no txtvers"),
        (wire(*good_items(), b"id=" + str(uuid.uuid4()).encode()), "duplicate TXT key 'id'"),
        (wire(*good_items(), b"ID=" + NODE_ID.encode()), "duplicate TXT key 'id'"),
        (wire(*good_items(ver=b"v" * 251)), "more than 32"),
        (wire(*good_items(id=None), b"id"), "has no '=' value"),
        (wire(*good_items(tier=b"fog")), "unknown tier"),
        (wire(*good_items(id=b"../../etc")), "bad node id"),
        (wire(*good_items(cfg=b"-1")), "bad cfg"),
        (wire(*good_items())[:-3] + b"\xff", "claims"),
        (b"\x00", "no txtvers"),
        (wire(*good_items(), b"k\x01y=1"), "not printable"),
        (wire(*good_items(), b"=novalue"), "empty key"),
    ],
    ids=["missing-id", "oversized", "bad-utf8", "txtvers-2", "no-txtvers", "duplicate-id", "duplicate-case",
         "255-byte-value", "missing-equals", "unknown-tier", "bad-id", "bad-cfg", "truncated", "empty",
         "control-char-key", "empty-key"],
)
def test_parse_txt_refuses_malformed_records_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        parse_txt(raw, name="x", port=1)


def test_parse_txt_refuses_absurd_ports() -> None:
    for port in (0, -1, 65536, 10**9):
        with pytest.raises(ValueError, match="absurd port"):
            parse_txt(GOOD, port=port)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_parse_txt_raw_bytes_never_crashes(raw: bytes) -> None:
    try:
        advert = parse_txt(raw, port=1)
    except ValueError:
        return
    assert isinstance(advert, NodeAdvert) and advert.tier in ("device", "edge", "cloud") and advert.node_id


_keys = st.sampled_from(["txtvers", "id", "tier", "ver", "proto", "fp", "cfg", "ID", "x", "paired"]) | st.text(
    max_size=12)
_values = st.none() | st.sampled_from(["1", "2", NODE_ID, "edge", "cloud", "0.1.0", "oip-v2-grpc", "7", ""]) | st.text(
    max_size=300)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_keys, _values), max_size=12))
def test_fuzz_parse_txt_structured_never_crashes(pairs: list[tuple[str, str | None]]) -> None:
    items = []
    for key, value in pairs:
        item = key.encode("utf-8", "surrogatepass") + (b"" if value is None else b"=" + value.encode(
            "utf-8", "surrogatepass"))
        items.append(item[:255])
    try:
        advert = parse_txt(wire(*items), port=50051)
    except ValueError:
        return
    # Whatever is accepted round-trips through the advertiser's encoder to the same record.
    txt = advert.txt_dict()
    assert parse_txt(encode_txt(txt.items()), port=50051) == advert


def test_build_txt_is_small_and_refuses_what_browsers_would_drop() -> None:
    txt = build_txt(NODE_ID, "cloud", "0.1.0", fingerprint="sha256:" + "ab" * 32, cfg=12, extra={"paired": "1"})
    assert len(encode_txt(txt.items())) < 400
    assert parse_txt(encode_txt(txt.items())).fingerprint.startswith("sha256:")
    with pytest.raises(ValueError):
        build_txt(NODE_ID, "cloud", "0.1.0", extra={"blob": "x" * 300})
    with pytest.raises(ValueError):
        build_txt("not an id", "cloud", "0.1.0")


def test_host_name_is_stable_and_derived_from_the_id() -> None:
    assert host_name_for(NODE_ID) == "td-3f2b8c1e6a4d.local."
    assert host_name_for("node") == host_name_for("node") and host_name_for("node").startswith("td-")


def test_advertiser_validates_its_arguments_up_front() -> None:
    def make(**kw: object) -> Advertiser:
        args: dict[str, object] = {"node_id": NODE_ID, "name": "n", "tier": "edge", "port": 50051,
                                   "addresses": ["127.0.0.1"], "version": "0.1.0"}
        args.update(kw)
        return Advertiser(**args)  # type: ignore[arg-type]

    assert make().instance_name == "n"
    assert len(make(name="é" * 60).instance_name.encode()) <= 56
    for bad in ({"tier": "fog"}, {"port": 0}, {"addresses": ["0.0.0.0"]}, {"addresses": ["::1"]},
                {"interfaces": ["eth0"]}, {"extra_txt": {"big": "x" * 300}}, {"extra_txt": {"ID": "spoof"}}):
        with pytest.raises(ValueError):
            make(**bad)


def test_parse_address_forms() -> None:
    assert parse_address("10.0.0.1:50051") == ("10.0.0.1", 50051)
    assert parse_address("[fd00::1]:7") == ("fd00::1", 7)
    assert parse_address("Relay.Example.org:1") == ("relay.example.org", 1)
    for bad in ("10.0.0.1", "10.0.0.1:0", "10.0.0.1:99999", ":5", "fd00::1:5", "[zz]:5", "a b:5"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_fleet_file_text_and_json_forms() -> None:
    text = "# lab fleet\n10.1.0.7:50051 edge gate camera 1\n\n[fd00::7]:50051 cloud\nrelay.example.org:50051  # far\n"
    adverts = parse_fleet(text)
    assert [(a.key, a.tier, a.name, a.source) for a in adverts] == [
        ("addr:10.1.0.7:50051", "edge", "gate camera 1", "fleet-file"),
        ("addr:[fd00::7]:50051", "cloud", "[fd00::7]:50051", "fleet-file"),
        ("addr:relay.example.org:50051", "", "relay.example.org:50051", "fleet-file"),
    ]
    as_json = json.dumps({"nodes": [{"address": "10.1.0.7:50051", "tier": "edge", "name": "gate camera 1"},
                                    "[fd00::7]:50051"]})
    assert [a.key for a in parse_fleet(as_json)] == ["addr:10.1.0.7:50051", "addr:[fd00::7]:50051"]
    for bad, where in (("10.1.0.7\n", "line 1"), ("ok:1\nx:1 fog\nx:1\n", "listed twice"), ("[1, 2]", "node 0"),
                       ("{", "not valid JSON"), ('[{"address": "a:1", "tier": "fog"}]', "unknown tier"),
                       ("[" * 100_000, "nested too deeply")):
        with pytest.raises(ValueError, match=where):
            parse_fleet(bad)


def _advert(node_id: str, name: str, address: str = "10.0.0.5", port: int = 50051, cfg: int = 0) -> NodeAdvert:
    """A record as the mDNS side would publish it."""
    return NodeAdvert(node_id=node_id, name=name, tier="edge", addresses=(address,), port=port, version="0.1.0",
                      cfg=cfg)


def test_browser_merges_static_nodes_and_re_keys_them_by_identity(tmp_path: Path) -> None:
    async def scenario() -> list[NodeEvent]:
        fleet = tmp_path / "fleet.txt"
        fleet.write_text("10.9.0.1:50051 cloud big\n10.9.0.2:50051\n")
        browser = Browser(["127.0.0.1"])
        events: list[NodeEvent] = []
        unsubscribe = browser.subscribe(events.append)
        await browser.async_load_fleet_file(fleet)
        assert set(browser.nodes()) == {"addr:10.9.0.1:50051", "addr:10.9.0.2:50051"}
        browser.add_manual("10.9.0.3:7000", tier="device", name="far cam")
        # the console connected to 10.9.0.1:50051 and learned which node answers there
        merged = browser.merge_identity("10.9.0.1:50051", NODE_ID, version="0.1.0")
        assert merged is not None and merged.node_id == NODE_ID and merged.tier == "cloud" and merged.name == "big"
        # the same node is also heard over mDNS: one record, the mDNS one
        browser._by_name["big._tierdeck._tcp.local."] = (1, _advert(NODE_ID, "big", "10.9.0.1"))
        browser._publish()
        assert browser.nodes()[NODE_ID].source == "mdns" and len(browser.nodes()) == 3
        # it says goodbye on mDNS but stays listed through the fleet file
        browser._by_name.clear()
        browser._publish()
        assert browser.nodes()[NODE_ID].source == "fleet-file"
        # the fleet file is reloaded without it: gone
        fleet.write_text("10.9.0.2:50051\n")
        await browser.async_load_fleet_file(fleet)
        assert browser.remove_manual("10.9.0.3:7000") and not browser.remove_manual("10.9.0.3:7000")
        assert set(browser.nodes()) == {"addr:10.9.0.2:50051"}
        unsubscribe()
        browser.add_manual("10.9.0.4:1")
        return events

    events = asyncio.run(scenario())
    kinds = [(e.kind, e.advert.key, e.previous_key) for e in events]
    assert kinds == [
        ("added", "addr:10.9.0.1:50051", None),
        ("added", "addr:10.9.0.2:50051", None),
        ("added", "addr:10.9.0.3:7000", None),
        ("removed", "addr:10.9.0.1:50051", None),
        ("added", NODE_ID, "addr:10.9.0.1:50051"),
        ("updated", NODE_ID, None),
        ("updated", NODE_ID, None),
        ("removed", NODE_ID, None),
        ("removed", "addr:10.9.0.3:7000", None),
    ]
    assert all(isinstance(e, NodeEvent) for e in events)
    with pytest.raises(AttributeError):
        events[0].advert.port = 1  # type: ignore[misc]


def test_browser_keys_mdns_records_by_node_id_not_by_name() -> None:
    async def scenario() -> list[tuple[str, str, str]]:
        browser = Browser(["127.0.0.1"])
        events: list[NodeEvent] = []
        browser.subscribe(events.append)

        def broken(event: NodeEvent) -> None:
            raise RuntimeError("a broken subscriber must not stop the others")

        browser.subscribe(broken)
        browser._by_name["a._tierdeck._tcp.local."] = (1, _advert(NODE_ID, "a", "10.0.0.5"))
        browser._publish()
        # the node comes back under a new name and a new address before its old records expire
        browser._by_name["a-2._tierdeck._tcp.local."] = (2, _advert(NODE_ID, "a-2", "10.0.0.6"))
        browser._publish()
        assert list(browser.nodes()) == [NODE_ID] and browser.nodes()[NODE_ID].addresses == ("10.0.0.6",)
        # the old name finally goes away: nothing changes for the node
        del browser._by_name["a._tierdeck._tcp.local."]
        browser._publish()
        return [(e.kind, e.advert.name, e.advert.addresses[0]) for e in events]

    assert asyncio.run(scenario()) == [("added", "a", "10.0.0.5"), ("updated", "a-2", "10.0.0.6")]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.lists(st.text(alphabet="0123456789.:[]abcdef edgecloudvi#\n", max_size=40)).map(
    "\n".join))
def test_fuzz_fleet_file_gives_records_or_a_clear_error(text: str) -> None:
    try:
        adverts = parse_fleet(text)
    except ValueError as exc:
        assert str(exc)
        return
    for advert in adverts:
        assert advert.key.startswith("addr:") and 1 <= advert.port <= 65535 and advert.source == "fleet-file"
        assert parse_address(advert.address) == (advert.addresses[0], advert.port)
