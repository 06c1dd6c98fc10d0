"""The wire: topics, keys, envelopes, the embedded broker and the Faust App factory."""
