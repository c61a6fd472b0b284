"""`babelora serve` over loopback through the real `openai` client: mixed-language requests
sent together share one decoding batch and each gets its own transcript; every bad input is
refused with the matching 4xx and OpenAI's error body, and the server keeps serving."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from reference.serving import KEY, LANGS, error_of, health, make_engine, post, request, write_clip

from babelora.serve.app import ServeSettings, create_app
from babelora.serve.batcher import BatchSettings
from babelora.serve.thread import ServerThread

openai = pytest.importorskip("openai")
NAMES = ("tiny-experts", "whisper-1")
MAX_UPLOAD = 1_500_000


@pytest.fixture(scope="module")
def engine(expert_set):
    return make_engine(expert_set)


def _settings(**batch) -> ServeSettings:
    return ServeSettings(
        model_names=NAMES, api_key=KEY, max_upload_bytes=MAX_UPLOAD, batch=BatchSettings(**batch)
    )


@pytest.fixture(scope="module")
def server(engine):
    with ServerThread(create_app(engine, _settings())) as running:
        yield running


def _client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


def _transcribe(client, clip, lang, **kwargs):
    with open(clip, "rb") as f:
        return client.audio.transcriptions.create(
            model="whisper-1", file=f, language=lang, **kwargs
        )


def test_mixed_languages_sent_together_share_a_batch_and_each_get_their_own_text(
    engine, clips, expected
):
    """6 requests in 6 languages from 6 threads: one decode call of 6; each response is its own
    clip's transcript in its own language, decoded alone."""
    jobs = list(zip(clips, LANGS))
    want = [expected(clip, lang) for clip, lang in jobs]
    assert len(set(want)) == len(want)  # a mix-up could not go unnoticed
    settings = _settings(max_batch_size=len(jobs), wait_ms=5000)  # closes when 6 are in
    with ServerThread(create_app(engine, settings)) as server:
        client = _client(server)
        with ThreadPoolExecutor(len(jobs)) as pool:
            got = list(pool.map(lambda job: _transcribe(client, *job).text, jobs))
        stats = health(server.url)
    assert got == want
    assert stats["batch_sizes"] == {str(len(jobs)): 1}
    rows = sum(int(size) * n for size, n in stats["forward_batch_sizes"].items())
    assert rows == len(jobs)  # every request went through the batched forward passes


def test_response_formats(server, clips, expected, expected_segments):
    """json/text: the plain transcript; verbose_json, srt and vtt: the long-form segments, each
    cue as the clip decoded alone with timestamps."""
    from babelora.decode.subtitles import to_srt, to_vtt

    client = _client(server)
    want = expected(clips[1], "fr")
    assert _transcribe(client, clips[1], "fr").text == want
    assert _transcribe(client, clips[1], "fr", response_format="text").strip() == want
    segments = expected_segments(clips[1], "fr")
    assert segments and all(0 <= s["start"] < s["end"] <= 1.0 for s in segments)
    verbose = _transcribe(client, clips[1], "fr", response_format="verbose_json")
    assert verbose.text == "".join(s["text"] for s in segments).strip()
    assert verbose.language == "french" and verbose.duration == pytest.approx(1.0)
    assert [(s.start, s.end, s.text) for s in verbose.segments] == [
        (s["start"], s["end"], s["text"]) for s in segments
    ]
    assert verbose.model_extra["babelora"] == {
        "language": "fr",
        "language_source": "given",
        "expert": "fr",
    }
    srt = _transcribe(client, clips[1], "fr", response_format="srt")
    assert srt == to_srt(segments) and srt.startswith("1\n00:00:00,")
    vtt = _transcribe(client, clips[1], "fr", response_format="vtt")
    assert vtt == to_vtt(segments) and vtt.startswith("WEBVTT\n\n00:00:00.")


def test_translations_decode_speech_translation_into_english(server, clips, expected):
    with open(clips[2], "rb") as f:
        out = _client(server).audio.translations.create(
            model="tiny-experts", file=f, extra_body={"language": "nl"}
        )
    assert out.text == expected(clips[2], "nl", "st")


def test_models_and_health(server):
    assert [m.id for m in _client(server).models.list().data] == list(NAMES)
    status, _, body = request(server.url + "/v1/models")  # no key
    assert status == 401 and error_of(body)["code"] == "invalid_api_key"
    stats = health(server.url)  # open: load balancers probe it without a key
    assert stats["status"] == "ok" and stats["languages"] == list(LANGS)


def _wav(clip) -> bytes:
    return clip.read_bytes()


def _bad_requests(tmp_path, clips):
    """(fields, files, key, status, param, message) for every bad-input row."""
    good = {"model": "whisper-1", "language": "de"}
    wav = _wav(clips[0])
    long_clip = write_clip(tmp_path / "long.wav", "noise", seconds=31.0)
    big = b"RIFF" + b"\0" * (MAX_UPLOAD + 100_000)
    huge = b"\0" * (MAX_UPLOAD + 2_000_000)
    audio = {"file": ("a.wav", wav)}
    return [
        (good, {"file": ("a.wav", b"this is not audio at all")}, KEY, 400, "file", "not usable"),
        (good, {"file": ("a.wav", b"")}, KEY, 400, "file", "empty"),
        (good, {"file": ("a.wav", wav[: len(wav) // 2])}, KEY, 400, "file", "truncated"),
        (good, {"file": ("long.wav", _wav(long_clip))}, KEY, 400, "file", "over the limit of 30"),
        (good, {"file": ("big.wav", big)}, KEY, 413, "file", "'big.wav' is 1.5 MiB, over"),
        (good, {"file": ("huge.wav", huge)}, KEY, 413, "file", "request body over the upload"),
        (good, {}, KEY, 400, "file", "provide an audio file"),
        ({**good, "file": "a.wav"}, {}, KEY, 400, "file", "not a text field"),
        ({"language": "de"}, audio, KEY, 400, "model", "provide a model"),
        ({**good, "model": "gpt-4o"}, audio, KEY, 404, "model", "gpt-4o"),
        ({**good, "language": "xx"}, audio, KEY, 400, "language", "unknown language code"),
        ({**good, "language": "ja"}, audio, KEY, 400, "language", ", ".join(LANGS)),
        ({"model": "whisper-1"}, audio, KEY, 400, "language", "--lid"),
        ({**good, "language": "auto"}, audio, KEY, 400, "language", "--lid"),
        ({**good, "response_format": "xml"}, audio, KEY, 400, "response_format", "xml"),
        ({**good, "temperature": "2"}, audio, KEY, 400, "temperature", "between 0 and 1"),
        ({**good, "temperature": "hot"}, audio, KEY, 400, "temperature", "number"),
        (good, audio, "wrong-key", 401, None, "incorrect API key"),
        (good, audio, None, 401, None, "missing API key"),
    ]


def test_every_bad_input_gets_its_4xx_naming_the_field(server, clips, tmp_path):
    url = server.url + "/v1/audio/transcriptions"
    for fields, files, key, status, param, message in _bad_requests(tmp_path, clips):
        got, headers, body = post(url, fields, files, key)
        err = error_of(body)
        assert (got, err["param"]) == (status, param), (fields, err)
        assert message in err["message"], err
        assert headers["content-type"] == "application/json"
    assert health(server.url)["queue_depth"] == 0


def test_routes_and_methods_that_do_not_exist(server):
    status, _, body = request(server.url + "/v1/audio/transcriptions")  # GET
    assert status == 405 and "method not allowed" in error_of(body)["message"]
    status, _, body = request(server.url + "/v1/audio/speech", b"", method="POST")
    assert status == 404 and "no such route" in error_of(body)["message"]


def test_bad_requests_do_not_disturb_the_good_ones(server, clips, expected, tmp_path):
    """Good and bad requests at the same time: the good ones get their own transcripts."""
    bad = _bad_requests(tmp_path, clips)
    url = server.url + "/v1/audio/transcriptions"
    client = _client(server)
    good = list(zip(clips[:3], LANGS))

    def send(i):
        if i < len(good):
            return _transcribe(client, *good[i]).text
        fields, files, key, status, _, _ = bad[i - len(good)]
        return post(url, fields, files, key)[0] == status

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, range(len(good) + len(bad))))
    assert results[: len(good)] == [expected(clip, lang) for clip, lang in good]
    assert all(results[len(good) :])


def test_malformed_multipart_is_a_400(server):
    headers = {"Content-Type": "multipart/form-data", "Authorization": f"Bearer {KEY}"}
    status, _, body = request(server.url + "/v1/audio/transcriptions", b"--x\r\n", headers)
    assert status == 400 and "multipart" in error_of(body)["message"]
