"""Stateroom room servers: authoritative game rooms that outlive their process."""
