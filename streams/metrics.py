"""Prometheus metrics shared by every process. Labels stay bounded: no ids in labels."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

STAGE_EVENTS = Counter("paycore_stage_events_total", "Messages handled per stage", ["stage"])
STAGE_SECONDS = Histogram(
    "paycore_stage_seconds", "Time to handle one message per stage", ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
DEADLETTERS = Counter("paycore_deadletters_total", "Messages sent to pay.deadletter",
                      ["stage", "reason"])
COMMANDS = Counter("paycore_commands_total", "Commands by type and result", ["type", "result"])
PAYMENTS_FINAL = Counter("paycore_payments_final_total", "Payments reaching a status",
                         ["status", "method", "channel"])
POSTINGS = Counter("paycore_ledger_postings_total", "Ledger legs and holds by result",
                   ["operation", "result"])
CHANNEL_REQUESTS = Counter("paycore_channel_requests_total", "Simulated channel answers",
                           ["channel", "operation", "outcome"])
END_TO_END_SECONDS = Histogram(
    "paycore_payment_e2e_seconds",
    "Order opened (the command accepted by intake, dedup and risk) to its first final status",
    ["status"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
AUDIT_CHECKS = Counter("paycore_audit_checks_total", "Ledger audit checks run", ["check"])
AUDIT_VIOLATIONS = Counter("paycore_audit_violations_total", "Ledger audit checks failed",
                           ["check"])
AUDIT_IN_FLIGHT = Gauge("paycore_audit_in_flight_minor",
                        "Money applied on some accounts of an entry but not yet all",
                        ["currency"])
AUDIT_OPEN_ENTRIES = Gauge("paycore_audit_open_entries", "Entries not yet applied on all accounts")
AUDIT_EVENTS = Counter("paycore_audit_events_total", "Ledger events audited", ["kind"])
RISK_DECISIONS = Counter("paycore_risk_decisions_total", "Risk verdicts", ["decision"])
RISK_RULE_HITS = Counter("paycore_risk_rule_hits_total", "Risk rules fired", ["rule"])
ROUTING_DECISIONS = Counter("paycore_routing_decisions_total", "First candidate chosen",
                            ["channel", "rule"])
FAILOVERS = Counter("paycore_channel_failovers_total", "Attempts moved to the next candidate",
                    ["from_channel", "to_channel", "cause"])
CHANNEL_ATTEMPTS = Counter("paycore_channel_attempts_total",
                           "Payment attempts' outcomes as the order stage saw them",
                           ["channel", "outcome"])
BREAKER_STATE = Gauge("paycore_channel_breaker_state",
                      "Circuit breaker per channel: 0 closed, 1 half-open, 2 open", ["channel"])
CHANNEL_SUCCESS_RATE = Gauge("paycore_channel_success_rate",
                             "Attempt success rate over the health window", ["channel"])
CONFIG_RELOADS = Counter("paycore_config_reloads_total", "Rule file reloads by result",
                         ["file", "result"])
CONFIG_VERSION = Info("paycore_config", "Rules version in force per file", ["file"])
INJECTIONS = Counter("paycore_sim_injections_total", "Faults the channel simulator applied",
                     ["channel", "kind"])
CALLBACKS = Counter("paycore_callbacks_total", "Channel answers at the order stage by result",
                    ["channel", "result"])
RECON_EXCEPTIONS = Counter("paycore_recon_exceptions_total",
                           "Reconciliation discrepancies raised", ["kind", "channel"])
RECON_AUTO_RESOLVED = Counter("paycore_recon_auto_resolved_total",
                              "Discrepancies resolved by a configured rule", ["kind", "channel"])
RECON_MATCHED = Counter("paycore_recon_matched_total",
                        "Payments whose order, ledger and settlement line all agree", ["channel"])
RECON_OPEN = Gauge("paycore_recon_open_items",
                   "Open reconciliation items on this worker, by age in days (0d, 1d, 2-6d, 7d+)",
                   ["channel", "state", "age"])
RECON_RESIDUAL = Gauge("paycore_recon_clearing_residual_minor",
                       "What channels still owe us on clearing (this worker's partitions)",
                       ["channel", "currency"])
WEBHOOK_DELIVERIES = Counter("paycore_webhook_deliveries_total",
                             "Webhook attempts by result (delivered, retry, failed: given up)",
                             ["result"])
WEBHOOK_SKIPPED = Counter("paycore_webhook_events_skipped_total",
                          "Events not queued for a webhook (no endpoint; a replay older than "
                          "the retry period)", ["why"])
WEBHOOK_SECONDS = Histogram("paycore_webhook_attempt_seconds",
                            "One webhook attempt, request to answer or error",
                            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
CHANNEL_SECONDS = Histogram(
    "paycore_channel_attempt_seconds", "Attempt sent to the channel's first final answer",
    ["channel", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
OVERDUE = Gauge("paycore_overdue_rows",
                "Rows of a deadline index still there well past their deadline (index=orders: "
                "stuck payments), on this worker's partitions", ["index"])
DUE_ROWS = Gauge("paycore_deadline_index_rows",
                 "Rows waiting in a deadline index (open orders, recon items, webhook retries)",
                 ["index"])
REBALANCES = Counter("paycore_rebalances_total", "Consumer group rebalances this process went "
                     "through", ["app"])
REBALANCE_SECONDS = Histogram("paycore_rebalance_seconds",
                              "Rebalance start to end, table recovery included", ["app"],
                              buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
ASSIGNED_PARTITIONS = Gauge("paycore_assigned_partitions",
                            "Partitions assigned to this process after its last rebalance",
                            ["app"])
CONSUMER_LAG = Gauge("paycore_consumer_lag_messages",
                     "Log end offset minus the group's committed offset",
                     ["group", "topic", "partition"])
CONSUMER_LAG_CHECKS = Counter("paycore_consumer_lag_checks_total",
                              "Lag measurements by result (ok, failed)", ["result"])
PARTITION_REREADS = Counter(
    "paycore_partition_rereads_total",
    "Partitions read again from an earlier offset by the worker itself (streams/faust_fixes"
    ".py): 'jump' a fetch past the next offset, 'stalled' a partition with messages left "
    "and no progress", ["reason"])
