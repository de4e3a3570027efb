"""The other transport end to end: a subset of the protocol, fault and failover tests,
run here on room servers started with ``STATEROOM_TRANSPORT=websockets`` (the suite
elsewhere runs on the default, picows). The tests are the integration modules' own,
imported; this module's fixtures give them clusters of their own on the reference
transport.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from server.settings import ServerSettings
from tests.cluster import LocalCluster
from tests.integration.test_failover import (
    store,
    test_sigkill_of_the_owner_while_bots_play,
)
from tests.integration.test_protocol_v2 import (
    test_private_parts_reach_only_their_player_and_events_their_recipients,
    test_sync_brings_a_keyframe,
    v2,
)
from tests.integration.test_room_server import (
    shared,
    test_bad_join_is_refused,
    test_first_message_must_be_join,
    test_http_probes,
    test_input_flood_is_limited_then_closed,
    test_join_timeout_closes_4002,
    test_leave_frees_the_seat_at_once,
    test_malformed_frames_after_join_get_errors_and_room_goes_on,
    test_missing_token_is_refused,
    test_non_owner_redirects_to_owner,
    test_origin_allow_list,
    test_oversized_frame_closes_1009,
    test_second_connection_replaces_first_and_resumes_seat,
    test_sequence_rules,
    test_slow_reader_is_evicted_and_others_keep_the_tick_rate,
    test_token_in_first_message_for_browsers,
    test_unknown_subprotocol_is_refused_at_handshake,
    token,
)

OTHER = "websockets"
assert ServerSettings().transport != OTHER, "this module runs the non-default transport"


@pytest.fixture(scope="module", autouse=True)
def reference_transport() -> Iterator[None]:
    """Room servers started while this module runs (they inherit the environment)
    speak websockets; set before any cluster fixture of the module starts."""
    before = os.environ.get("STATEROOM_TRANSPORT")
    os.environ["STATEROOM_TRANSPORT"] = OTHER
    try:
        yield
    finally:
        if before is None:
            del os.environ["STATEROOM_TRANSPORT"]
        else:
            os.environ["STATEROOM_TRANSPORT"] = before


def test_the_servers_here_run_the_reference_transport(shared: LocalCluster) -> None:
    for name in shared.servers:
        assert f"({OTHER} transport," in shared.log(name), shared.log(name)[-2000:]


__all__ = [
    "shared",
    "store",
    "test_bad_join_is_refused",
    "test_first_message_must_be_join",
    "test_http_probes",
    "test_input_flood_is_limited_then_closed",
    "test_join_timeout_closes_4002",
    "test_leave_frees_the_seat_at_once",
    "test_malformed_frames_after_join_get_errors_and_room_goes_on",
    "test_missing_token_is_refused",
    "test_non_owner_redirects_to_owner",
    "test_origin_allow_list",
    "test_oversized_frame_closes_1009",
    "test_private_parts_reach_only_their_player_and_events_their_recipients",
    "test_second_connection_replaces_first_and_resumes_seat",
    "test_sequence_rules",
    "test_sigkill_of_the_owner_while_bots_play",
    "test_slow_reader_is_evicted_and_others_keep_the_tick_rate",
    "test_sync_brings_a_keyframe",
    "test_token_in_first_message_for_browsers",
    "test_unknown_subprotocol_is_refused_at_handshake",
    "token",
    "v2",
]
