"""The kind of each of the runtime's topics (the label of the log's append latency)."""

from __future__ import annotations

from runtime.cluster.membership import members_topic
from runtime.routing import Topics
from statefun.address import TypeName


def test_every_topic_of_the_application_has_its_kind_and_others_are_other() -> None:
    topics = Topics("app")
    assert {
        topic: topics.kind_of(topic)
        for topic in (
            topics.messages,
            topics.egress(TypeName("example", "greetings")),
            topics.egress_markers(0),
            topics.dead_letters,
            topics.control,
            topics.decisions,
            f"{topics.decisions}-3",
            "app-checkpoints-0",
            members_topic("app"),
            "app-unknown",
            "other-messages",
            "numbers",
        )
    } == {
        "app-messages": "messages",
        "app-egress.example.greetings": "egress",
        "app-egress-published-0": "egress",
        "app-dead-letters": "dead-letters",
        "app-control": "control",
        "app-decisions": "decisions",
        "app-decisions-3": "decisions",
        "app-checkpoints-0": "checkpoints",
        "app-members": "members",
        "app-unknown": "other",
        "other-messages": "other",
        "numbers": "other",
    }
