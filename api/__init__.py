"""The HTTP API: commands in (published to pay.commands), queries out (read model)."""
