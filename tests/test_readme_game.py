"""The README's "Write your own game" example runs as written: options, a view, events."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from server.engine import RoomEngine
from server.options import room_options

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_the_readme_game_plays() -> None:
    section = README[README.index("## Write your own game") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(compile(code.group(1), "README.md", "exec"), namespace)
    clicker = namespace["Clicker"]
    options = room_options(clicker, {"goal": 2})
    game = clicker.create(1)
    game.setup(options)
    engine = RoomEngine(game, options=options)
    engine.offer_join("a", "A")
    engine.offer_join("b", "B")
    engine.step()
    for seq in (1, 2):
        engine.offer_input("a", seq, "click")
        outcome = engine.step()
    assert [(e.data, e.to) for e in outcome.emitted] == [
        ({"winner": "a"}, None),
        ({"you": "won"}, ("a",)),
    ]
    assert engine.view("a") == {"my_score": 2} and engine.view("b") == {"my_score": 0}
    assert outcome.state == {"leader": "a"}
