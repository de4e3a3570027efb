"""Stateroom login service: stateless, JWT (EdDSA) access tokens, refresh tokens in Redis."""
