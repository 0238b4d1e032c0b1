"""Delivery: the backend queues' notification payloads turned into mail, IRC lines, feed events.

The pure parts (reading a payload into :class:`~fmn.delivery.base.Delivery`
items, rendering, the flood limit, digest bookkeeping) live here beside the
ports they need (mailer, IRC connection, feed store, "do this once"); the
Lambda handlers under ``functions/send_*`` and ``functions/sse`` are thin
adapters around them.
"""
