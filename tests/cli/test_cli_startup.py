"""The command line starts without importing torch (seconds of start-up): `babelora --help`,
every sub-command's `--help` and the commands that need no model (score, corpus) stay light;
torch loads only where a command decodes, trains or merges."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import argparse, sys
from babelora.cli.main import build_parser
parser = build_parser()
parser.format_help()
subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
names = []
for sub in subs:
    for name, p in sub.choices.items():
        p.format_help()
        names.append(name)
heavy = [m for m in ("torch", "transformers", "peft") if m in sys.modules]
print(len(names), ",".join(heavy))
"""


def test_parser_and_every_help_load_without_torch():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert int(out[0]) >= 10  # transcribe, translate, evaluate, score, merge, corpus, train, ...
    assert len(out) == 1, f"imported at start-up: {out[1]}"


def test_merging_exports_resolve_lazily():
    """`babelora.merging` names its exports without importing them; each resolves on first use
    to the driver's, the recipe's and the ops' objects."""
    code = (
        "import sys, babelora.merging as m; assert 'torch' not in sys.modules; "
        "from babelora.merging import merge, plan, load_recipe, MERGE_METHODS; "
        "from babelora.merging.driver import merge as d; assert merge is d and callable(plan); "
        "assert 'lors' in MERGE_METHODS and callable(load_recipe); print(sorted(m.__all__))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "merge" in out and "MergePlan" in out
