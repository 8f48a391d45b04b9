"""Float64 numpy oracles for the tests: losses, forward pass, optimizers.

The harness never imports them; every backend is held to them.
"""
