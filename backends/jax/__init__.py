"""The JAX backend (flax + optax). Importing this package does not import jax."""
