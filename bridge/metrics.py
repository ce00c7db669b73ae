"""Prometheus metrics. Each process has its own registry (no module-level state), so
tests and several apps in one process never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.webhooks = Counter(
            "bridge_webhooks_total",
            "Order webhooks received, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.step_attempts = Counter(
            "bridge_step_attempts_total",
            "Step attempts, by step kind and outcome",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "bridge_jobs_finished_total",
            "Jobs that reached a final status",
            ["status"],
            registry=self.registry,
        )
        self.panel_call_seconds = Histogram(
            "bridge_panel_call_seconds",
            "Panel call latency, by panel and call",
            ["panel", "call"],
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180, 600),
        )
        self.panel_turn_wait_seconds = Histogram(
            "bridge_panel_turn_wait_seconds",
            "How long mutating calls waited for their turn at a panel's gate (one call at a time per panel), by panel",
            ["panel"],
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300),
        )
        self.panel_quiet_periods = Counter(
            "bridge_panel_quiet_periods_total",
            "Times a panel's gate stayed closed after a mutating call with an unknown outcome, by panel and "
            "reason (no_answer: the panel never answered a call; holder_lost: the holder of the gate "
            "ended without letting go)",
            ["panel", "reason"],
            registry=self.registry,
        )
        self.callbacks = Counter(
            "bridge_callback_deliveries_total",
            "Callback delivery attempts, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.relay_published = Counter(
            "bridge_outbox_published_total", "Wake-ups the outbox relay published", registry=self.registry
        )
        # Read from the database when /metrics is scraped; a registry of their own, so that a
        # process that does not read them (a worker) does not report them as zero.
        self.database_registry = CollectorRegistry()
        db = self.database_registry
        self.jobs_by_status = Gauge("bridge_jobs", "Jobs by status", ["status"], registry=db)
        self.outbox_backlog = Gauge("bridge_outbox_backlog", "Unsent outbox rows", registry=db)
        self.outbox_oldest_age = Gauge(
            "bridge_outbox_oldest_age_seconds", "Age of the oldest unsent outbox row", registry=db
        )
        self.callback_backlog = Gauge(
            "bridge_callback_backlog", "Callbacks not yet delivered (still retrying)", registry=db
        )
        self.breaker_open = Gauge(
            "bridge_panel_breaker_open", "1 while a panel's circuit breaker is open", ["panel"], registry=db
        )

    def render(self, *, database_gauges: bool = True) -> bytes:
        """The text format; ``database_gauges=False`` leaves out the gauges read from the database."""
        counted = generate_latest(self.registry)
        return counted + generate_latest(self.database_registry) if database_gauges else counted
