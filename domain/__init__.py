"""Pure payment logic: no broker, no web framework, no clock.

Every decision function takes the state it needs, the command or event, and ``now_ms``,
and returns the new (frozen) state plus the messages to emit.
"""
