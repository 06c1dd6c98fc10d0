"""Topic names and what keys them (DESIGN.md §2). Every keyed topic has the same partitions."""

from __future__ import annotations

COMMANDS = "pay.commands"            # key: whatever the client used; intake re-keys
DEDUP = "pay.dedup"                  # internal; key: merchant + idempotency key
ORDERS = "pay.orders"                # internal; key: payment id
MANDATES = "pay.mandates"            # internal; key: mandate key (merchant + mandate id)
RISK = "pay.risk"                    # internal; key: payer (account, customer, card, device)
CHANNEL_REQUESTS = "pay.channel.requests"    # key: payment id
CHANNEL_CALLBACKS = "pay.channel.callbacks"  # key: payment id
LEDGER_POSTINGS = "pay.ledger.postings"      # key: account id
LEDGER_ENTRIES = "pay.ledger.entries"        # key: account id
SETTLEMENTS = "pay.channel.settlements"      # key: payment id or channel serial
EVENTS = "pay.events"                # key: payment id
RECON = "pay.recon"                  # internal; key: payment id (ledger legs re-keyed, wake-ups)
RECON_EXCEPTIONS = "pay.recon.exceptions"    # key: payment id; exceptions, ops' resolutions
RECON_STATUS = "pay.recon.status"    # key: recon partition; each partition's latest tally
UNAPPLIED = "pay.orders.unapplied"   # key: payment id; answers the order stage did not apply
DEADLETTER = "pay.deadletter"        # key: original key
DEADLETTER_ACTIONS = "pay.deadletter.actions"  # key: dead letter id; ops' replays, discards
WEBHOOKS = "pay.webhooks"            # internal; key: payment id or mandate key (outcomes, wake-ups)
WEBHOOK_ENDPOINTS = "pay.webhooks.endpoints"     # key: merchant id; latest wins
WEBHOOK_DELIVERIES = "pay.webhooks.deliveries"   # key: payment id; delivery state changes
AUDIT_STATUS = "pay.audit.status"    # key: "auditor"; the ledger auditor's latest status
SIM_CONTROL = "pay.sim.control"      # simulator fault plans; key: scenario name
SIM_INJECTIONS = "pay.sim.injections"  # faults the simulator applied; key: payment id

ALL = (COMMANDS, DEDUP, RISK, ORDERS, MANDATES, CHANNEL_REQUESTS, CHANNEL_CALLBACKS,
       LEDGER_POSTINGS, LEDGER_ENTRIES, SETTLEMENTS, EVENTS, RECON, RECON_EXCEPTIONS,
       RECON_STATUS, UNAPPLIED, WEBHOOKS, WEBHOOK_ENDPOINTS, WEBHOOK_DELIVERIES, AUDIT_STATUS,
       DEADLETTER, DEADLETTER_ACTIONS, SIM_CONTROL, SIM_INJECTIONS)
REPLAYABLE = frozenset({COMMANDS, DEDUP, RISK, ORDERS, MANDATES, CHANNEL_CALLBACKS,
                        LEDGER_POSTINGS, SETTLEMENTS})
"""Topics a corrected copy of a dead letter may go back to: the payment path's inputs. Not
the ledger's own events (the auditor's dead letters: discard them), nor outputs."""
