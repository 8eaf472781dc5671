"""The scaler's Prometheus metrics, in a registry of its own (one controller, one registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

JOB_LABELS = ("namespace", "job")


class ScalerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.desired = Gauge("tensile_scaler_desired_nodes", "Nodes the policy wants the job to have (0: suspended).",
                             JOB_LABELS, registry=self.registry)
        self.current = Gauge("tensile_scaler_current_nodes", "The Job's parallelism (0 while suspended).",
                             JOB_LABELS, registry=self.registry)
        self.ready = Gauge("tensile_scaler_ready_nodes", "The Job's ready pods.", JOB_LABELS, registry=self.registry)
        self.decisions = Counter("tensile_scaler_decisions", "Decisions taken, by their reason.",
                                 (*JOB_LABELS, "reason"), registry=self.registry)
        self.latency = Histogram("tensile_scaler_decision_seconds",
                                 "One job's pass: reading its inputs, deciding and acting.",
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=self.registry)
        self.errors = Counter("tensile_scaler_errors", "Inputs that could not be read and actions that failed.",
                              (*JOB_LABELS, "stage"), registry=self.registry)

    def serve(self, port: int, host: str = "0.0.0.0"):
        """An HTTP server for /metrics in a daemon thread; returns (server, thread)."""
        return start_http_server(port, addr=host, registry=self.registry)
