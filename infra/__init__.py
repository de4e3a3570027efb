"""Shared infrastructure that every component may import: Redis URLs, the embedded
Valkey, the cluster file, free ports and the event loop.

The walls of the house: ``auth`` imports nothing from ``server``; ``server`` imports
nothing from ``client``; ``client`` imports only the shared wire protocol
(``server.protocol``, which imports no I/O) and this package. ``infra`` imports none
of the three.
"""
