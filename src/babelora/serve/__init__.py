"""babelora.serve: an HTTP server with OpenAI's audio API, batching many languages' experts.

- `engine`: the model, loaded once (base + PEFT adapter or expert set, optional LID head), and
  the decoding of one batch of jobs (`decode_requests` with per-row expert routing).
- `batcher`: dynamic batching: requests that arrive together (a short wait window, a maximum
  batch size) are decoded as one batch in a worker thread; a bounded queue.
- `upload`: the multipart form of a request, checked field by field (file, model, language,
  response_format, temperature, prompt) and the uploaded audio (size, readable, duration).
- `formats`: json, text, verbose_json, srt, vtt responses; `errors`: OpenAI's error body.
- `app`: the Starlette app (`create_app`); `thread`: run it on loopback in a thread (tests,
  bench/serve_load.py).
"""
