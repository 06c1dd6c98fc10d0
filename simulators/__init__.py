"""Channel simulators: banks, card acquirers and wallets, deterministic for a seed."""
