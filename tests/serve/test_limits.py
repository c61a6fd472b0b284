"""The server's limits over HTTP with a stand-in model that can be held: a full queue answers
503 (with Retry-After), a request that waits too long 504, a model failure 500; each in
OpenAI's error shape, and the server serves the next request normally."""

from __future__ import annotations

import json
import threading
import time

import pytest
from reference.serving import KEY, error_of, health, post, signal

from babelora.languages import check_lang
from babelora.serve.app import ServeSettings, create_app
from babelora.serve.batcher import BatchSettings
from babelora.serve.engine import Outcome, Stats
from babelora.serve.thread import ServerThread


class HeldEngine:
    """Decodes to 'ok <lang>' once `release` is set; fails jobs of language 'fi'."""

    lid = None
    languages = ()
    max_seconds = 30.0

    def __init__(self):
        self.stats = Stats()
        self.release = threading.Event()
        self.release.set()

    def check_language(self, lang):
        return check_lang(lang)

    def decode(self, jobs):
        self.stats.batch(len(jobs))
        self.release.wait(30)
        if any(job.lang == "fi" for job in jobs):
            raise RuntimeError("the model fell over")
        return [Outcome(text=f"ok {job.lang}", lang=job.lang) for job in jobs]


@pytest.fixture
def wav(tmp_path):
    import soundfile as sf

    sf.write(str(tmp_path / "a.wav"), signal("low"), 16000, subtype="PCM_16")
    return (tmp_path / "a.wav").read_bytes()


def _start(engine, **kwargs):
    batch = BatchSettings(max_batch_size=1, wait_ms=0, max_queue=1)
    return ServerThread(create_app(engine, ServeSettings(api_key=KEY, batch=batch, **kwargs)))


def _send(server, wav, lang="de", out=None):
    fields = {"model": "babelora", "language": lang}
    result = post(server.url + "/v1/audio/transcriptions", fields, {"file": ("a.wav", wav)})
    if out is not None:
        out.append(result)
    return result


def _wait(predicate, timeout=30.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.02)


def test_a_full_queue_answers_503_and_the_queued_requests_still_complete(wav):
    engine = HeldEngine()
    engine.release.clear()
    with _start(engine) as server:
        done: list = []
        first = threading.Thread(target=_send, args=(server, wav, "de", done))
        first.start()
        _wait(lambda: health(server.url)["busy"])
        second = threading.Thread(target=_send, args=(server, wav, "fr", done))
        second.start()
        _wait(lambda: health(server.url)["queue_depth"] == 1)
        status, headers, body = _send(server, wav, "nl")
        assert status == 503 and headers["retry-after"] == "1"
        assert error_of(body)["code"] == "server_busy"
        engine.release.set()
        first.join(60)
        second.join(60)
    assert sorted(json.loads(body)["text"] for _, _, body in done) == ["ok de", "ok fr"]


def test_a_request_over_the_timeout_gets_504_and_the_next_one_is_served(wav):
    engine = HeldEngine()
    engine.release.clear()
    with _start(engine, timeout=0.5) as server:
        status, _, body = _send(server, wav)
        assert status == 504 and error_of(body)["code"] == "timeout"
        engine.release.set()
        _wait(lambda: not health(server.url)["busy"])
        status, _, body = _send(server, wav, "pt")
        assert status == 200 and json.loads(body) == {"text": "ok pt"}


def test_a_model_failure_is_a_500_for_its_batch_only(wav):
    with _start(HeldEngine()) as server:
        status, _, body = _send(server, wav, "fi")
        assert status == 500 and error_of(body)["type"] == "server_error"
        status, _, body = _send(server, wav, "sv")
        assert status == 200 and json.loads(body) == {"text": "ok sv"}
