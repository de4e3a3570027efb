"""Stateroom client SDK and sample clients (terminal player, headless bots)."""
