"""What members read about a voice session: the join sentence and voice-status, from the real controller's
answers, in words and without feature ids."""
from __future__ import annotations

import itertools

import pytest

from bot_client.feature_words import features_report, session_changes
from bot_client.graph_api import _feature_state
from bot_client.status import format_status
from graph.controller.config import ControllerConfig
from graph.controller.features import DEFAULT_FEATURES
from graph.controller.sessions import SessionRequest
from graph.controller.state_machine import SessionController

FEATURE_IDS = [spec.feature_id for spec in DEFAULT_FEATURES]


@pytest.fixture
def controller(tmp_path):
    counter = itertools.count(1)
    ctl = SessionController.open(ControllerConfig(state_dir=str(tmp_path)), id_factory=lambda: f"s{next(counter)}")
    yield ctl
    ctl.close()


def client_view(ctl: SessionController):
    """The features as the bot reads them from `GET /v1/features`."""
    return [_feature_state(result.to_dict()) for result in ctl.features()]


def test_the_join_sentence_says_what_members_notice_and_leaves_out_the_silent_ones(controller):
    started = controller.start_session(SessionRequest(guild_id="g", voice_channel_id="v", text_channel_id="t", user_id="u"))
    blackouts = tuple(r.feature for r in started.blackouts)
    assert set(blackouts) == set(FEATURE_IDS)
    sentence = session_changes(blackouts)
    assert sentence == ("While I'm in voice, I won't draw or look at images, I'll answer text messages after I "
                        "leave, I won't chime in on my own, scheduled posts wait until I'm back and new figure "
                        "alerts wait until I'm back.")
    for word in ("argu", "picture", "GPU", "RX", *FEATURE_IDS):
        assert word not in sentence
    assert session_changes(("vision",)) == "While I'm in voice, I won't look at images."
    assert session_changes(("bipolar_mode", "profile_picture", "text_inference", "some_new_feature")) == ""


def test_voice_status_lists_every_feature_in_words_in_and_out_of_a_session(controller):
    outside = features_report(client_view(controller))
    assert len(outside) == len(FEATURE_IDS)
    assert "• Drawing: on" in outside and "• Miku vs Evil Miku arguments: on" in outside
    assert "• Where my text replies are written: my usual server" in outside

    controller.start_session(SessionRequest(guild_id="g", voice_channel_id="v", text_channel_id="t", user_id="u"))
    inside = features_report(client_view(controller))
    assert inside == [
        "• Looking at images and videos: off until I leave voice",
        "• Drawing: off until I leave voice",
        "• Miku vs Evil Miku arguments: off until I leave voice",
        "• Profile picture changes: on hold until I leave voice",
        "• Speaking up on my own: paused until I leave voice",
        "• Scheduled posts: paused until I leave voice",
        "• Figure alerts: paused: new ones are posted after I leave voice",
        "• Answering text messages: held: I'll answer them after I leave voice",
        "• Where my text replies are written: the RX 6800 (voice-session server)",
    ]
    report = format_status(None, client_view(controller), None)
    assert "What I can do right now:" in report
    for feature in FEATURE_IDS:
        assert feature not in report
