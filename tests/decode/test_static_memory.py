"""Bad input for GPU decoding: a missing device is a one-line error; an out-of-memory batch is
split and retried once, then a clear error naming the batch size; no item is lost. The CLI
decodes the same with --kv-cache static."""

from __future__ import annotations

import pytest
import torch

import babelora.decode.runner as runner
from babelora.cli.main import main
from babelora.decode.memory import DeviceError, check_device, split_on_oom
from babelora.decode.runner import Request, RunnerOptions, decode_requests
from babelora.decode.search import DecodeOptions

OPTS = RunnerOptions(show_progress=False, min_input_seconds=0.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_one_line_error(tone_wav, capsys):
    with pytest.raises(DeviceError, match="no CUDA GPU is available"):
        check_device("cuda")
    assert main(["transcribe", str(tone_wav(0.5)), "--device", "cuda", "--model", "tiny.en"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no CUDA GPU is available" in err and len(err.splitlines()) == 1
    with pytest.raises(DeviceError, match="not a device name"):
        check_device("gpu0")


def _fake_oom(limit: int, calls: list[int]):
    """A generate that runs out of memory on batches larger than `limit` rows."""
    real = runner.generate

    def generate(model, enc, prompts, *args, **kwargs):
        calls.append(len(prompts))
        if len(prompts) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, enc, prompts, *args, **kwargs)

    return generate


def test_oom_splits_batch_and_loses_nothing(tiny_handle, tone_wav, monkeypatch):
    files = [tone_wav(0.5 + 0.01 * i, name=f"a{i}.wav") for i in range(6)]
    reqs = [Request(f"u{i}", str(f)) for i, f in enumerate(files)]
    dec = DecodeOptions(max_new_tokens=4)
    want = decode_requests(tiny_handle, reqs, dec, OPTS)
    calls: list[int] = []
    monkeypatch.setattr(runner, "generate", _fake_oom(3, calls))
    got = decode_requests(tiny_handle, reqs, dec, OPTS)
    assert calls == [6, 3, 3]  # the batch of 6, then its halves
    assert [r.hypothesis for r in got] == [r.hypothesis for r in want]
    assert all(r.error is None for r in got)


def test_oom_twice_names_the_batch_size(tiny_handle, tone_wav, monkeypatch):
    reqs = [Request(f"u{i}", str(tone_wav(0.5, name=f"a{i}.wav"))) for i in range(4)]
    monkeypatch.setattr(runner, "generate", _fake_oom(1, []))
    with pytest.raises(DeviceError, match="batch of 4 items, and again on half of it"):
        decode_requests(tiny_handle, reqs, DecodeOptions(max_new_tokens=2), OPTS)


def test_split_on_oom_keeps_order_and_other_errors_pass():
    def fn(items):
        if len(items) > 2:
            raise RuntimeError("CUDA error: out of memory")
        return [x * 10 for x in items]

    assert split_on_oom(fn, [1, 2, 3, 4]) == [10, 20, 30, 40]
    with pytest.raises(ValueError, match="boom"):
        split_on_oom(lambda items: (_ for _ in ()).throw(ValueError("boom")), [1, 2])
    with pytest.raises(DeviceError, match="batch of 1 item"):
        split_on_oom(lambda items: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")), [1])


def test_cli_static_cache_decodes_the_same(tone_wav, capsys):
    files = [str(tone_wav(0.6 + 0.3 * i, name=f"c{i}.wav")) for i in range(3)]
    common = ["--model", "tiny.en", "--no-progress", "--max-new-tokens", "8", "--language", "en"]
    assert main(["transcribe", *files, *common]) == 0
    dynamic = capsys.readouterr().out
    assert main(["transcribe", *files, *common, "--kv-cache", "static"]) == 0
    assert capsys.readouterr().out == dynamic
    assert main(["transcribe", *files, *common, "--kv-cache", "static", "--graphs", "cuda"]) == 2
    assert "graphs='cuda' needs the model on a CUDA device" in capsys.readouterr().err
