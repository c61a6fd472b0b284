"""Language 'auto': the LID head predicts each request's language inside its batch; a
predicted language without experts fails that request alone."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from reference.serving import KEY, LANGS, error_of, make_engine, post

from babelora.models.lid import LidConfig, LidHead
from babelora.serve.app import ServeSettings, create_app
from babelora.serve.batcher import BatchSettings
from babelora.serve.thread import ServerThread

LID_LANGS = ("de", "nl", "ja")  # ja has no experts in the set


@pytest.fixture(scope="module")
def lid():
    """A linear head that always predicts one language (`predict(lang)` picks it)."""
    head = LidHead(64, LID_LANGS, LidConfig(hidden=0)).eval()

    def predict(lang: str) -> LidHead:
        with torch.no_grad():
            head.mlp.weight.zero_()
            head.mlp.bias.copy_(torch.tensor([5.0 if x == lang else 0.0 for x in LID_LANGS]))
        return head

    return predict


@pytest.fixture(scope="module")
def server(expert_set, lid):
    engine = make_engine(expert_set, lid=lid("nl"))
    settings = ServeSettings(api_key=KEY, batch=BatchSettings(max_batch_size=2, wait_ms=5000))
    with ServerThread(create_app(engine, settings)) as running:
        yield running


def _send(server, clip, language=None):
    fields = {"model": "babelora", "response_format": "verbose_json"}
    if language:
        fields["language"] = language
    return post(
        server.url + "/v1/audio/transcriptions", fields, {"file": (clip.name, clip.read_bytes())}
    )


def _long_form_text(expected_segments, clip, lang: str) -> str:
    """verbose_json's text: the clip's long-form segments (decoded alone with that expert)."""
    return "".join(s["text"] for s in expected_segments(clip, lang)).strip()


def test_auto_language_is_predicted_and_routed(server, lid, clips, expected_segments):
    """Two requests, one 'auto' (predicted nl), one given (de), decoded in one batch."""
    lid("nl")
    with ThreadPoolExecutor(2) as pool:
        auto, given = pool.map(lambda a: _send(server, *a), [(clips[0], "auto"), (clips[1], "de")])
    auto, given = json.loads(auto[2]), json.loads(given[2])
    assert auto["babelora"] == {"language": "nl", "language_source": "predicted", "expert": "nl"}
    assert auto["text"] == _long_form_text(expected_segments, clips[0], "nl")
    assert auto["language"] == "dutch"
    assert given["text"] == _long_form_text(expected_segments, clips[1], "de")
    assert given["babelora"]["language_source"] == "given"


def test_a_predicted_language_without_experts_fails_alone(server, lid, clips, expected_segments):
    lid("ja")
    with ThreadPoolExecutor(2) as pool:
        bad, good = pool.map(lambda a: _send(server, *a), [(clips[2], None), (clips[3], "it")])
    err = error_of(bad[2])
    assert bad[0] == 400 and err["param"] == "language"
    assert "'ja'" in err["message"] and "predicted" in err["message"], err
    assert ", ".join(LANGS) in err["message"]
    assert good[0] == 200 and json.loads(good[2])["text"] == _long_form_text(
        expected_segments, clips[3], "it"
    )
