"""discovery/ for real on loopback: advertiser, browser, hostile adverts, agent processes, `tierdeck nodes`.

zeroconf is bound to 127.0.0.1 only. Other test runs may advertise on loopback at the same time, so every
assertion looks only at the nodes this test made (names and ids unique per run).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
import sys
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from netns import ROOT, Agent
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from discovery import SERVICE_TYPE, Advertiser, Browser, NodeEvent

LO = ["127.0.0.1"]


def run(coro: Coroutine[Any, Any, None], timeout: float = 120) -> None:
    """Run one scenario in a fresh event loop, failing (not hanging) past `timeout`."""
    asyncio.run(asyncio.wait_for(coro, timeout))


async def until(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll `predicate` until it holds; fail with `what` at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def tag() -> str:
    """A suffix unique to this run."""
    return secrets.token_hex(3)


def test_advertise_update_rename_and_goodbye_in_one_process() -> None:
    async def scenario() -> None:
        suffix = tag()
        browser = Browser(LO)
        events: list[NodeEvent] = []
        browser.subscribe(events.append)
        await browser.async_start()
        id_a, id_b = str(uuid.uuid4()), str(uuid.uuid4())
        a = Advertiser(id_a, f"cam {suffix}", "device", 50051, LO, "0.1.0", fingerprint="sha256:00ff")
        b = Advertiser(id_b, f"cam {suffix}", "edge", 50052, LO, "0.1.0")
        try:
            await a.async_start()
            await until(lambda: id_a in browser.nodes(), what="first advertiser found")
            node = browser.nodes()[id_a]
            assert (node.name, node.tier, node.port, node.addresses) == (f"cam {suffix}", "device", 50051, tuple(LO))
            assert (node.version, node.proto, node.fingerprint, node.cfg) == ("0.1.0", "oip-v2-grpc", "sha256:00ff", 0)
            assert node.host == f"td-{id_a.replace('-', '')[:12]}.local."

            await b.async_start()  # same name: probing finds the first one and renames
            assert b.instance_name == f"cam {suffix}-2" and a.instance_name == f"cam {suffix}"
            await until(lambda: id_b in browser.nodes(), what="renamed advertiser found")
            assert browser.nodes()[id_b].name == f"cam {suffix}-2"

            await a.async_update(cfg=3, paired="1")
            await until(lambda: browser.nodes()[id_a].cfg == 3, what="cfg update seen")
            assert browser.nodes()[id_a].txt_dict()["paired"] == "1"
            assert any(e.kind == "updated" and e.advert.node_id == id_a and e.advert.cfg == 3 for e in events)

            await a.async_stop()
            await until(lambda: id_a not in browser.nodes(), what="goodbye seen")
            assert id_b in browser.nodes()
            kinds = [e.kind for e in events if e.advert.node_id == id_a]
            assert kinds[0] == "added" and kinds[-1] == "removed"
        finally:
            await a.async_stop()
            await b.async_stop()
            await browser.async_stop()

    run(scenario())


def test_three_nodes_claiming_one_name_at_the_same_moment_end_with_distinct_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        name = f"twin-{tag()}"
        expected = {name, f"{name}-2", f"{name}-3"}
        browser = Browser(LO)
        await browser.async_start()
        # Started together: one wins the probe, the other two hear it and rename to "-2" in lockstep, so
        # those two probe "-2" at the same instant, both take it, and only the post-announcement
        # conflict check (RFC 6762 §9) separates them.
        twins = [Advertiser(str(uuid.uuid4()), name, "edge", 50080 + i, LO, "0.1.0") for i in range(3)]
        try:
            await asyncio.gather(*(twin.async_start() for twin in twins))

            def settled() -> bool:
                names = {twin.instance_name for twin in twins}
                seen = {browser.nodes()[t._node_id].name for t in twins if t._node_id in browser.nodes()}
                return names == expected and seen == names

            await until(settled, what="the clash resolved into three names, seen by the browser")
            for twin in twins:
                assert browser.nodes()[twin._node_id].port == twin._port
                assert browser.nodes()[twin._node_id].name == twin.instance_name
        finally:
            for twin in twins:
                await twin.async_stop()
            await browser.async_stop()

    with caplog.at_level(logging.INFO, logger="tierdeck.discovery._advertiser"):
        run(scenario())


# Each case is registered for real with zeroconf on loopback: (case, port, raw TXT strings).
def _case(suffix: str) -> list[tuple[str, int, bytes]]:
    node_id = str(uuid.uuid4())
    base = {"txtvers": b"1", "id": node_id.encode(), "tier": b"edge", "ver": b"0.1.0", "proto": b"oip-v2-grpc"}

    def txt(drop: str = "", extra: tuple[bytes, ...] = (), **override: bytes) -> bytes:
        fields = {**base, **override}
        items = [k.encode() + b"=" + v for k, v in fields.items() if k != drop] + list(extra)
        return b"".join(bytes([len(item)]) + item for item in items)

    return [
        ("missing-id", 50051, txt(drop="id")),
        ("oversized-txt", 50051, txt(extra=(b"pad=" + b"x" * 250, b"pad2=" + b"y" * 250))),
        ("bad-utf8", 50051, txt(ver=b"0.1\xff\xfe")),
        ("unknown-txtvers", 50051, txt(txtvers=b"9")),
        ("duplicate-keys", 50051, txt(extra=(b"id=" + str(uuid.uuid4()).encode(),))),
        ("absurd-port", 0, txt()),
        ("255-byte-value", 50051, txt(extra=(b"fp=" + b"f" * 252,))),
        ("missing-equals", 50051, txt(drop="tier", extra=(b"tier",))),
        ("truncated-string", 50051, txt() + b"\xff" + b"tier=cloud"),
        ("empty-txt", 50051, b"\x00"),
    ]


def test_malformed_advertisements_are_ignored_with_one_log_line_each(caplog: pytest.LogCaptureFixture) -> None:
    suffix = tag()
    cases = _case(suffix)

    def lines_about(instance: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "tierdeck.discovery._browser"
                and r.levelno >= logging.WARNING and f"'{instance}." in r.getMessage()]

    async def scenario() -> None:
        browser = Browser(LO)
        events: list[NodeEvent] = []
        browser.subscribe(events.append)
        await browser.async_start()
        hostile = AsyncZeroconf(interfaces=LO, ip_version=IPVersion.V4Only)
        good = Advertiser(str(uuid.uuid4()), f"fine-{suffix}", "cloud", 50060, LO, "0.1.0")
        infos = []
        try:
            for case, port, raw in cases:
                info = AsyncServiceInfo(SERVICE_TYPE, f"bad-{case}-{suffix}.{SERVICE_TYPE}", port=port,
                                        properties=raw, server=f"td-bad-{case}-{suffix}.local.", parsed_addresses=LO)
                # cooperating_responders: no probing, the whole hostile set goes out at once
                await hostile.async_register_service(info, cooperating_responders=True)
                infos.append(info)
            for case, _port, _raw in cases:
                instance = f"bad-{case}-{suffix}"
                await until(functools.partial(lines_about, instance), what=f"log line for {case}")

            # the browser keeps working: a valid node registered after all of them is found
            await good.async_start()
            await until(lambda: good._node_id in browser.nodes(), what="valid node after hostile ones")

            # a hostile node re-announcing a different but equally bad TXT is not logged again
            dup = next(i for i in infos if "duplicate-keys" in i.name)
            worse = AsyncServiceInfo(SERVICE_TYPE, dup.name, port=50051, server=dup.server, parsed_addresses=LO,
                                     properties=dup.text + b"\x0cid=also-fake")
            await (await hostile.async_update_service(worse))
            await good.async_update(cfg=1)
            await until(lambda: browser.nodes()[good._node_id].cfg == 1, what="later update of the valid node")

            for case, _port, _raw in cases:
                instance = f"bad-{case}-{suffix}"
                assert len(lines_about(instance)) == 1, (case, lines_about(instance))
            assert not any(e.advert.name.startswith("bad-") and suffix in e.advert.name for e in events)
            assert all(suffix not in n.name or n.name == f"fine-{suffix}" for n in browser.nodes().values())
        finally:
            await good.async_stop()
            await hostile.async_close()
            await browser.async_stop()

    with caplog.at_level(logging.WARNING, logger="tierdeck.discovery._browser"):
        run(scenario())
    for case, reason in (("missing-id", "no 'id'"), ("oversized-txt", "more than 400"), ("bad-utf8", "not UTF-8"),
                         ("unknown-txtvers", "unknown txtvers"), ("duplicate-keys", "duplicate TXT key"),
                         ("absurd-port", "absurd port"), ("255-byte-value", "more than 100"),
                         ("missing-equals", "no '=' value"), ("truncated-string", "claims 255 bytes")):
        assert reason in lines_about(f"bad-{case}-{suffix}")[0], case


def test_two_agents_on_loopback_are_found_and_stopping_one_removes_it(tmp_path: Path) -> None:
    suffix = tag()

    async def scenario() -> None:
        browser = Browser(LO)
        events: list[NodeEvent] = []
        browser.subscribe(events.append)
        await browser.async_start()
        agents: list[Agent] = []
        try:
            for tier in ("device", "edge"):
                agents.append(Agent(f"{tier}-{suffix}", tier, tmp_path / tier, log_dir=tmp_path))
            for agent in agents:
                await asyncio.to_thread(agent.wait_listening)
            ids = {agent.node_id: agent for agent in agents}
            await until(lambda: ids.keys() <= browser.nodes().keys(), what="both agents found")
            for node_id, agent in ids.items():
                node = browser.nodes()[node_id]
                assert node.tier == agent.name.split("-")[0] and node.name == agent.name
                assert node.address == agent.address and node.source == "mdns" and node.version

            await asyncio.to_thread(agents[0].stop)
            await until(lambda: agents[0].node_id not in browser.nodes(), what="removal after graceful stop")
            removed = [e for e in events if e.kind == "removed" and e.advert.node_id == agents[0].node_id]
            assert len(removed) == 1 and agents[1].node_id in browser.nodes()
        finally:
            for agent in agents:
                await asyncio.to_thread(agent.stop)
            await browser.async_stop()

    run(scenario())


def test_tierdeck_nodes_prints_json(tmp_path: Path) -> None:
    suffix = tag()
    fleet = tmp_path / "fleet.txt"
    fleet.write_text("10.99.0.1:50051 cloud far-away\n")

    async def scenario() -> None:
        node_id = str(uuid.uuid4())
        adv = Advertiser(node_id, f"cli-{suffix}", "edge", 50070, LO, "0.1.0")
        await adv.async_start()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli", "nodes", "--interface", "127.0.0.1", "--timeout", "3", "--json",
                "--fleet", str(fleet), cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            nodes = {n["key"]: n for n in json.loads(out)}
            mine = nodes[node_id]
            assert {k: mine[k] for k in ("id", "name", "tier", "addresses", "port", "version")} == {
                "id": node_id, "name": f"cli-{suffix}", "tier": "edge", "addresses": ["127.0.0.1"], "port": 50070,
                "version": "0.1.0"}
            assert nodes["addr:10.99.0.1:50051"]["source"] == "fleet-file"

            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli", "nodes", "--interface", "eth0", cwd=ROOT,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode == 2 and b"not an IP address" in err
        finally:
            await adv.async_stop()

    run(scenario())
