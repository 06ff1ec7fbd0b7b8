"""The advertiser's goodbye for a lost name: no cache-flush bit, and no queued answer brings the records back."""

from __future__ import annotations

import asyncio

from zeroconf import DNSIncoming, IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from discovery import SERVICE_TYPE
from discovery._advertiser import _drop_queued_answers, _goodbye_for


def _info(port: int, server: str) -> AsyncServiceInfo:
    return AsyncServiceInfo(SERVICE_TYPE, f"gate-2.{SERVICE_TYPE}", port=port, server=server,
                            parsed_addresses=["127.0.0.1"], properties={"txtvers": "1", "id": server[:8]})


def test_the_goodbye_withdraws_only_our_records_and_flushes_nobody_elses() -> None:
    lost = _info(50051, "td-aaaaaaaaaaaa.local.")
    answers = DNSIncoming(_goodbye_for(lost).packets()[0]).answers()
    assert {a.type for a in answers} == {33, 16}  # SRV and TXT, not the shared PTR
    assert all(a.ttl == 0 for a in answers)
    # Without the cache-flush bit, a receiver does not expire the winner's SRV/TXT for the same name.
    assert not any(a.unique for a in answers)
    assert lost.dns_service().unique  # (what zeroconf itself would have sent)
    assert answers[0] == lost.dns_service() and answers[1] == lost.dns_text()  # still matches our cached records


def test_answers_queued_for_the_lost_name_are_dropped_and_others_kept() -> None:
    async def scenario() -> None:
        aiozc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        try:
            zc = aiozc.zeroconf
            lost, other = _info(50051, "td-aaaaaaaaaaaa.local."), _info(50052, "td-bbbbbbbbbbbb.local.")
            ptr = lost.dns_pointer()
            zc.out_queue.async_add(0, {ptr: {lost.dns_service(), lost.dns_text(), lost.dns_addresses()[0]},
                                        lost.dns_service(): set()})
            zc.out_delay_queue.async_add(0, {lost.dns_text(): set(), other.dns_addresses()[0]: set()})
            assert _drop_queued_answers(zc, lost.key) == 4
            left = {record: extra for queue in (zc.out_queue, zc.out_delay_queue) for group in queue.queue
                    for record, extra in group.answers.items()}
            assert set(left) == {ptr, other.dns_addresses()[0]}
            assert left[ptr] == {lost.dns_addresses()[0]}
        finally:
            await aiozc.async_close()
    asyncio.run(scenario())
