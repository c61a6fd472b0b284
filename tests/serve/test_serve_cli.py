"""`babelora serve` from the command line: the model loads once from the flags, the key comes
from --api-key or $BABELORA_API_KEY, aliases answer as `model`; the app it would hand to
uvicorn serves an OpenAI client on loopback."""

from __future__ import annotations

import pytest
from reference.serving import KINDS, write_clip

from babelora.cli.main import build_parser, main
from babelora.cli.serve import settings_from_args
from babelora.models.whisper import tiny_random_whisper
from babelora.serve.thread import ServerThread

openai = pytest.importorskip("openai")


def test_settings_from_flags_and_environment(monkeypatch):
    parse = build_parser().parse_args
    monkeypatch.setenv("BABELORA_API_KEY", "from-env")
    args = parse(["serve", "--name", "whisper-1", "--name", "mine", "--max-upload-mb", "2"])
    settings = settings_from_args(args)
    assert settings.api_key == "from-env" and settings.model_names == ("whisper-1", "mine")
    assert settings.max_upload_bytes == 2 * 2**20
    assert settings_from_args(parse(["serve", "--api-key", "flag"])).api_key == "flag"
    monkeypatch.delenv("BABELORA_API_KEY")
    settings = settings_from_args(parse(["serve", "--batch-wait-ms", "3", "--max-queue", "5"]))
    assert settings.api_key is None and settings.model_names == ("babelora",)
    assert (settings.batch.wait_ms, settings.batch.max_queue) == (3, 5)


@pytest.mark.parametrize("flag", ["--max-batch-size=0", "--timeout=-1", "--max-queue=x"])
def test_bad_limits_are_refused_by_the_parser(flag, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", flag])
    assert "must be" in capsys.readouterr().err


def test_serve_loads_the_model_and_its_app_answers(tmp_path, monkeypatch, expert_set):
    handle = tiny_random_whisper(seed=0)
    handle.model.save_pretrained(str(tmp_path / "base"))
    handle.tokenizer.save_pretrained(str(tmp_path / "base"))
    seen = {}

    def fake_run(app, host, port, log_level):
        seen.update(app=app, host=host, port=port)

    monkeypatch.setattr("uvicorn.run", fake_run)
    monkeypatch.setenv("BABELORA_API_KEY", "sesame")
    argv = ["serve", "--model", str(tmp_path / "base"), "--experts", str(expert_set)]
    argv += ["--name", "whisper-1", "--prompt-style", "multilingual", "--max-new-tokens", "4"]
    assert main(argv) == 0
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8000)  # loopback unless told
    clip = write_clip(tmp_path / "a.wav", KINDS[0])
    with ServerThread(seen["app"]) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sesame", max_retries=0)
        with open(clip, "rb") as f:
            out = client.audio.transcriptions.create(
                model="whisper-1", file=f, language="de", response_format="verbose_json"
            )
        assert out.model_extra["babelora"]["expert"] == "de"
        bad = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_serve_on_a_missing_gpu_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["serve", "--model", "tiny.en", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device cuda: no CUDA GPU is available here" in err and "\n" not in err
