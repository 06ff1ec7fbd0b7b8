"""Prometheus text exposition of the agent's telemetry (`--metrics-port`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from runners._telemetry import LATENCY_BUCKETS
from runners.protocol import STAGE_COUNTERS

if TYPE_CHECKING:
    from runners.agent import Agent

_HELP = {
    "requests_total": "Inference requests served by the stage",
    "inferences_total": "Input rows run through the stage's model",
    "escalated_total": "Rows the escalation rule sent up",
    "forwarded_total": "Escalations answered by the next hop",
    "dropped_total": "Rows settled by drop_class",
    "shed_total": "Escalations shed by the escalation budget",
    "queued_total": "Escalations put in the store-and-forward queue",
    "delivered_total": "Queued escalations delivered later",
    "overflow_total": "Escalations refused at the store-and-forward bound",
    "provisional_total": "Rows answered provisional",
    "errors_total": "Failed requests",
    "duplicates_total": "Re-sent escalated rows answered from the cache instead of re-run",
    "dead_letter_total": "Escalations the next hop refused as invalid, set aside (see tierdeck dead-letters)",
    "hop_errors_total": "Forwarded calls to the next hop that failed",
    "hop_calls_total": "Forwarded calls to the next hop",
    "shadow_sent_total": "Settled rows sent to the next hop in shadow mode (never counted as escalations)",
    "shadow_answered_total": "Shadow rows the rest of the cascade answered",
    "shadow_agreed_total": "Answered shadow rows where the next tier gave the settled class",
    "shadow_shed_total": "Sampled shadow rows dropped (budget, link down or backed up, buffer full)",
}
# Every counter of the descriptor, in its order; one without a help text fails here, at import.
_STAGE_COUNTERS = {name: _HELP[name] for name in STAGE_COUNTERS}


class AgentCollector:
    """Reads the live agent state at scrape time; counters come straight from the cumulative stats."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family."""
        agent = self.agent
        labels = ["node_id", "stage"]
        for name, doc in _STAGE_COUNTERS.items():
            family = CounterMetricFamily(f"tierdeck_stage_{name.removesuffix('_total')}", doc, labels=labels)
            for stats in list(agent.stats.values()):
                family.add_metric([agent.node_id, stats.stage_id], stats.counters[name])
            yield family
        compute = CounterMetricFamily("tierdeck_stage_compute_seconds", "Time spent inside onnxruntime",
                                      labels=labels)
        compute_cpu = CounterMetricFamily("tierdeck_stage_compute_cpu_seconds",
                                          "CPU time of the threads that ran onnxruntime's calls", labels=labels)
        energy = CounterMetricFamily("tierdeck_stage_energy_joules", "Node energy attributed to the stage",
                                     labels=labels)
        depth = GaugeMetricFamily("tierdeck_stage_queue_depth", "Escalations waiting in store-and-forward",
                                  labels=labels)
        latency = HistogramMetricFamily("tierdeck_stage_request_latency_seconds", "End-to-end request latency",
                                        labels=labels)
        for stats in list(agent.stats.values()):
            key = [agent.node_id, stats.stage_id]
            compute.add_metric(key, stats.compute_seconds_total)
            compute_cpu.add_metric(key, stats.compute_cpu_seconds_total)
            energy.add_metric(key, stats.energy_joules_total)
            depth.add_metric(key, stats.queue_depth)
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), stats.latency_bucket_counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric(key, buckets, stats.latency_seconds_sum)
        yield from (compute, compute_cpu, energy, depth, latency)
        # What each stage's session really runs on (never a provider that is only installed).
        provider = GaugeMetricFamily("tierdeck_stage_provider_info", "Execution provider the stage runs on (1)",
                                     labels=[*labels, "provider"])
        fallback = GaugeMetricFamily("tierdeck_stage_cpu_fallback_nodes",
                                     "Graph nodes run on the CPU provider although an accelerator was chosen",
                                     labels=labels)
        warmup = GaugeMetricFamily("tierdeck_stage_warmup_seconds", "Latency of a warm-up inference after the first",
                                   labels=[*labels, "provider"])
        measured = GaugeMetricFamily("tierdeck_stage_energy_measured", "1 when the stage's energy comes from a "
                                     "sensor (source label), 0 when it is an estimate", labels=[*labels, "source"])
        for stats in list(agent.stats.values()):
            measured.add_metric([agent.node_id, stats.stage_id, stats.energy_source], float(stats.energy_measured))
        yield measured
        for stage in list(agent.stages.values()):
            if stage.placement is None:
                continue
            key = [agent.node_id, stage.stage_id]
            provider.add_metric([*key, stage.placement.runs_on], 1.0)
            fallback.add_metric(key, stage.placement.cpu_fallback_nodes)
            warmup.add_metric([*key, stage.placement.runs_on], stage.placement.warmup_ms / 1000.0)
        yield from (provider, fallback, warmup)
        available = GaugeMetricFamily("tierdeck_node_execution_provider", "Providers in the agent's order "
                                      "(value: rank, 1 = first choice)", labels=["node_id", "provider"])
        for rank, name in enumerate(agent.provider_order, 1):
            available.add_metric([agent.node_id, name], rank)
        problems = GaugeMetricFamily("tierdeck_node_runtime_problems",
                                     "Problems with the onnxruntime install found at start (e.g. a broken mix)",
                                     labels=["node_id"])
        problems.add_metric([agent.node_id], len(agent.runtime_problems))
        yield from (available, problems)
        sample = agent.node_sample
        node = ["node_id", "source"]
        power = GaugeMetricFamily("tierdeck_node_power_watts", "Node power; source says measured or estimate",
                                  labels=node)
        power.add_metric([agent.node_id, sample.power_source or agent.power.source], sample.power_watts)
        joules = CounterMetricFamily("tierdeck_node_energy_joules", "Node energy since the agent started",
                                     labels=node)
        joules.add_metric([agent.node_id, sample.power_source or agent.power.source], sample.energy_joules_total)
        cpu = GaugeMetricFamily("tierdeck_node_cpu_ratio", "Agent CPU use as a fraction of the machine",
                                labels=["node_id"])
        cpu.add_metric([agent.node_id], sample.cpu_percent / 100.0)
        rss = GaugeMetricFamily("tierdeck_node_resident_memory_bytes", "Agent resident memory", labels=["node_id"])
        rss.add_metric([agent.node_id], sample.rss_bytes)
        yield from (power, joules, cpu, rss)


def serve_metrics(agent: Agent, host: str, port: int) -> int:
    """Start the Prometheus HTTP endpoint in a daemon thread; returns the bound port."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))  # type: ignore[arg-type]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
