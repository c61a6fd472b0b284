"""Issue 8, point 2: files never execute what they contain.

Every loader a user points at a file (Whisper folders, PEFT adapters, merge inputs, training
checkpoints, expert sets) refuses pickle files (.bin/.pt/.pth) with a clear one-line message;
where an explicit flag exists (`allow_pickle` / `--allow-pickle`) they load through
torch.load(weights_only=True). A pickle whose unpickling would create a marker file is fed to
every path, with and without the flag, and the marker must never appear. Also: YAML is only read
with safe loaders and torch.load is never called without weights_only=True (a scan of src/),
and manifests cannot escape a configured data root (evaluate --data-root, data.data_root)."""

from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from rel_matrix import save_tiny_model
from safetensors.torch import load_file

from babelora.cli.main import main
from babelora.errors import BabeloraError, ManifestError, MergeError, ModelLoadError

SRC = Path(__file__).resolve().parents[2] / "src" / "babelora"


class Payload:
    """Unpickling this calls open(marker, 'w'): the file appears iff the pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "a pickle payload was executed"


def write_payload(path: Path, marker: Path, keys=("weight",), legacy: bool = False) -> Path:
    """A state-dict-looking pickle whose values run the payload when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: Payload(marker) for key in keys}
    if legacy:  # a raw pickle stream, not torch's zip format
        path.write_bytes(pickle.dumps(state, protocol=2))
    else:
        torch.save(state, path)
    return path


def test_the_payload_is_live(tmp_path):
    """Control: an unsafe loader does execute it (so the marker checks below mean something)."""
    for legacy in (False, True):
        control = tmp_path / f"control-{legacy}"
        path = write_payload(tmp_path / f"evil-{legacy}.pt", control, legacy=legacy)
        if legacy:
            pickle.loads(path.read_bytes())
        else:
            torch.load(path, weights_only=False)
        assert control.exists()


def one_line(err: BaseException, *words: str) -> str:
    text = str(err)
    assert "\n" not in text, text
    for word in words:
        assert word in text, text
    return text


def cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if ": error: " in x]
    assert len(lines) <= 1, err
    return code, lines[0] if lines else ""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=3)


# ----------------------------------------------------------------------------- Whisper folders
@pytest.mark.parametrize("legacy", [False, True])
def test_whisper_folder_with_pickle_payload(tiny_dir, tmp_path, marker, capsys, legacy):
    from babelora.models.whisper import load_whisper

    folder = tmp_path / "hf"
    shutil.copytree(tiny_dir, folder)
    (folder / "model.safetensors").unlink()
    write_payload(folder / "pytorch_model.bin", marker, legacy=legacy)
    with pytest.raises(ModelLoadError) as refused:
        load_whisper(folder)
    one_line(refused.value, "pytorch_model.bin", "pickle", "allow_pickle")
    with pytest.raises(ModelLoadError) as blocked:
        load_whisper(folder, allow_pickle=True)
    one_line(blocked.value, str(folder), "weights_only=True", "nothing was run")
    code, line = cli(capsys, "transcribe", folder / "x.wav", "--model", folder)
    assert code == 2 and "pickle" in line
    code, line = cli(capsys, "transcribe", folder / "x.wav", "--model", folder, "--allow-pickle")
    assert code == 2 and "weights_only=True" in line


def test_whisper_pickle_loads_with_the_flag_through_weights_only(tiny_dir, tmp_path, monkeypatch):
    from babelora.models.whisper import load_whisper

    folder = tmp_path / "hf"
    shutil.copytree(tiny_dir, folder)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    calls = spy_torch_load(monkeypatch)
    model = load_whisper(folder, allow_pickle=True).model
    assert calls and all(kw.get("weights_only") is True for kw in calls)
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


def spy_torch_load(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


# ----------------------------------------------------------------------------- PEFT adapters
@pytest.fixture(scope="module")
def peft_dir(tmp_path_factory, tiny_dir) -> Path:
    """A PEFT LoRA adapter (safetensors) for the tiny model, with non-zero B."""
    from babelora.adapters import LoRAConfig, export_peft, inject, language_experts
    from babelora.models.whisper import load_whisper

    handle = inject(load_whisper(tiny_dir).model, language_experts(LoRAConfig(rank=2), ("de",)))
    with torch.no_grad():
        for layer in handle.layers.values():
            layer.lora_B.normal_(std=0.02)
    folder = tmp_path_factory.mktemp("peft") / "de"
    export_peft(handle, folder, lang="de")
    return folder


def pickled_adapter(peft_dir: Path, folder: Path, marker: Path | None) -> Path:
    """The adapter with adapter_model.bin instead of .safetensors (a payload, or the weights)."""
    shutil.copytree(peft_dir, folder)
    weights = folder / "adapter_model.safetensors"
    if marker is None:
        torch.save(load_file(str(weights)), folder / "adapter_model.bin")
    else:
        write_payload(folder / "adapter_model.bin", marker)
    weights.unlink()
    return folder


def test_peft_adapter_with_pickle_payload(peft_dir, tiny_dir, tmp_path, marker, capsys):
    from babelora.adapters import LoRAConfig, inject, language_experts, load_peft_expert
    from babelora.methods.loading import apply_peft_adapter
    from babelora.models.whisper import load_whisper

    folder = pickled_adapter(peft_dir, tmp_path / "evil", marker)
    with pytest.raises(ModelLoadError) as err:
        apply_peft_adapter(load_whisper(tiny_dir), folder)
    one_line(err.value, str(folder), "adapter_model.bin", "pickle")
    handle = inject(load_whisper(tiny_dir).model, language_experts(LoRAConfig(rank=2), ("de",)))
    with pytest.raises(ModelLoadError) as err:
        load_peft_expert(handle, folder, lang="de")
    one_line(err.value, str(folder), "adapter_model.bin", "pickle")
    code, line = cli(
        capsys, "transcribe", tmp_path / "x.wav", "--model", tiny_dir, "--adapter", folder
    )
    assert code == 2 and "adapter_model.bin" in line


def merge_recipe(base: Path, inputs: list[Path], out: Path, **extra) -> dict:
    return {
        "base": str(base),
        "inputs": [{"path": str(p), "name": f"in{i}"} for i, p in enumerate(inputs)],
        "method": "task_arithmetic",
        "output": {"path": str(out)},
        "progress": False,
        **extra,
    }


@pytest.mark.parametrize("kind", ["lora", "full_file", "full_folder"])
def test_merge_inputs_with_pickle_payload(peft_dir, tiny_dir, tmp_path, marker, kind):
    from babelora.merging import merge

    if kind == "lora":
        bad = pickled_adapter(peft_dir, tmp_path / "evil", marker)
    elif kind == "full_file":
        bad = write_payload(tmp_path / "evil.pt", marker)
    else:
        bad = tmp_path / "evil"
        write_payload(bad / "pytorch_model.bin", marker)
        shutil.copy(tiny_dir / "config.json", bad / "config.json")
    with pytest.raises(MergeError) as refused:
        merge(merge_recipe(tiny_dir, [bad], tmp_path / "out"))
    one_line(refused.value, "pickle", "allow_pickle: true")
    with pytest.raises(MergeError) as blocked:
        merge(merge_recipe(tiny_dir, [bad], tmp_path / "out", allow_pickle=True))
    one_line(blocked.value, "not a weights-only state dict", "GLOBAL")
    assert not (tmp_path / "out").exists()


def test_merge_lora_pickle_with_the_flag_equals_safetensors(
    peft_dir, tiny_dir, tmp_path, monkeypatch
):
    from babelora.merging import merge

    plain = merge(merge_recipe(tiny_dir, [peft_dir], tmp_path / "a"))
    calls = spy_torch_load(monkeypatch)
    pickled = pickled_adapter(peft_dir, tmp_path / "bin", None)
    via_pickle = merge(merge_recipe(tiny_dir, [pickled], tmp_path / "b", allow_pickle=True))
    assert calls and all(kw.get("weights_only") is True for kw in calls)
    a, b = (load_file(str(r.output / "model.safetensors")) for r in (plain, via_pickle))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- checkpoints
def test_training_checkpoint_folders_never_unpickle(tmp_path, marker):
    """A checkpoint folder of pickles (as other trainers write) is not a checkpoint; one whose
    meta.json vouches for a pickle renamed .safetensors fails to parse, never to execute."""
    from babelora.train import checkpoint as ckpt

    root = tmp_path / "checkpoints"
    foreign = root / "step-00000002"
    for name in ("pytorch_model.bin", "optimizer.pt", "rng_state.pth", "trainable.pt"):
        write_payload(foreign / name, marker)
    assert ckpt.latest_checkpoint(root) is None
    with pytest.raises(ModelLoadError) as err:
        ckpt.load_checkpoint(foreign)
    one_line(err.value, "not a complete babelora checkpoint")
    forged = root / "step-00000003"
    write_payload(forged / "trainable.safetensors", marker)
    for stem in ("optimizer", "scheduler"):
        write_payload(forged / f"{stem}.safetensors", marker)
        (forged / f"{stem}.json").write_text("{}")
    (forged / "trainer_state.json").write_text(json.dumps({"step": 3}))
    files = {p.name: p.stat().st_size for p in forged.iterdir()}
    (forged / "meta.json").write_text(json.dumps({"step": 3, "files": files}))
    assert ckpt.latest_checkpoint(root) == forged
    with pytest.raises(ModelLoadError) as err:
        ckpt.load_checkpoint(forged)
    one_line(err.value, str(forged), "cannot read checkpoint")


def test_train_resume_from_a_forged_checkpoint(tmp_path, marker, capsys):

    from reference.corpus import config_yaml

    from babelora.train import checkpoint as ckpt

    cfg = config_yaml(tmp_path / "data", tmp_path / "run", max_steps=1)
    forged = tmp_path / "run" / ckpt.CKPT_DIR / "step-00000001"
    write_payload(forged / "trainable.safetensors", marker)
    files = {p.name: p.stat().st_size for p in forged.iterdir()}
    (forged / "meta.json").write_text(json.dumps({"step": 1, "files": files}))
    code, line = cli(capsys, "train", cfg, "--resume")
    assert code == 2 and str(forged) in line and "cannot read checkpoint" in line


# ----------------------------------------------------------------------------- expert sets
def test_expert_set_with_pickle_payload(tiny_dir, tmp_path, marker, capsys):
    from babelora.adapters import LoRAConfig, inject, language_experts, save_adapter_set
    from babelora.methods.loading import load_expert_set
    from babelora.models.whisper import load_whisper

    good = tmp_path / "set"
    save_adapter_set(
        inject(load_whisper(tiny_dir).model, language_experts(LoRAConfig(rank=2), ("de",))), good
    )
    pickled = tmp_path / "pickled"
    shutil.copytree(good, pickled)
    (pickled / "babelora_experts.safetensors").unlink()
    write_payload(pickled / "babelora_experts.bin", marker)
    renamed = tmp_path / "renamed"  # a pickle under the safetensors name
    shutil.copytree(good, renamed)
    write_payload(renamed / "babelora_experts.safetensors", marker)
    for folder, words in (
        (pickled, "not a saved expert set"),
        (renamed, "cannot read safetensors"),
    ):
        with pytest.raises(ModelLoadError) as err:
            load_expert_set(load_whisper(tiny_dir), folder)
        one_line(err.value, str(folder), words)
        code, line = cli(
            capsys, "transcribe", tmp_path / "x.wav", "--model", tiny_dir, "--experts", folder
        )
        assert code == 2 and str(folder) in line


def test_lid_head_folder_with_pickle_payload(tmp_path, marker):
    from babelora.models.lid import LidHead

    write_payload(tmp_path / "lid" / "lid.pt", marker)
    with pytest.raises(ModelLoadError) as err:
        LidHead.load(tmp_path / "lid")
    one_line(err.value, "lid.safetensors")


# ----------------------------------------------------------------------------- source scan
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name):
                yield owner.id, node.func.attr, node


def _kw(node: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def unsafe_loads(text: str, name: str) -> list[str]:
    """Calls in `text` that could execute file content: yaml.load without a Safe loader,
    yaml.unsafe_load/full_load, torch.load without weights_only=True, pickle/marshal loads,
    np.load(allow_pickle=True), trust_remote_code other than False, weights_only=False."""
    tree = ast.parse(text)
    safe_names = {  # names bound to a Safe loader, e.g. _LOADER = yaml.CSafeLoader
        t.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and "Safe" in ast.unparse(node.value)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    bad = []
    for owner, attr, node in _calls(tree):
        where = f"{name}:{node.lineno}"
        if owner == "yaml" and attr in ("unsafe_load", "full_load", "unsafe_load_all"):
            bad.append(f"{where}: yaml.{attr}")
        if owner == "yaml" and attr in ("load", "load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            text_loader = ast.unparse(loader) if loader is not None else ""
            if "Safe" not in text_loader and text_loader not in safe_names:
                bad.append(f"{where}: yaml.{attr} with Loader={text_loader or 'default'}")
        if owner == "torch" and attr == "load":
            flag = _kw(node, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                bad.append(f"{where}: torch.load without weights_only=True")
        if owner in ("pickle", "marshal", "dill", "cloudpickle") and attr in ("load", "loads"):
            bad.append(f"{where}: {owner}.{attr}")
        if owner in ("np", "numpy") and attr == "load":
            flag = _kw(node, "allow_pickle")
            if isinstance(flag, ast.Constant) and flag.value is True:
                bad.append(f"{where}: np.load(allow_pickle=True)")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.keyword)
            and node.arg in ("trust_remote_code", "weights_only")
            and isinstance(node.value, ast.Constant)
            and node.value.value is (node.arg == "trust_remote_code")
        ):
            bad.append(f"{name}:{node.value.lineno}: {node.arg}={node.value.value}")
    return bad


def test_the_source_scan_catches_unsafe_loads():
    snippet = """
import yaml, torch, pickle, numpy as np
_LOADER = yaml.SafeLoader
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
yaml.unsafe_load(text)
torch.load(path)
torch.load(path, weights_only=False)
pickle.loads(blob)
np.load(path, allow_pickle=True)
AutoModel.from_pretrained(name, trust_remote_code=True)
yaml.load(text, Loader=_LOADER)
yaml.safe_load(text)
torch.load(path, weights_only=True)
np.load(path)
"""
    found = unsafe_loads(snippet, "x.py")
    assert [int(f.split(":")[1]) for f in found] == [4, 5, 6, 7, 8, 9, 10, 8, 11], found


def test_source_uses_only_safe_loaders():
    """The scan above over every module under src/babelora finds nothing."""
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        bad += unsafe_loads(path.read_text(encoding="utf-8"), str(path.relative_to(SRC)))
    assert not bad, bad


def test_config_and_recipe_yaml_never_construct_objects(tmp_path, marker):
    """A YAML tag that an unsafe loader would turn into a call is a ConfigError."""
    from babelora.merging import load_recipe
    from babelora.train.config import load_train_config

    evil = f"seed: !!python/object/apply:builtins.open ['{marker}', 'w']\n"
    (tmp_path / "c.yaml").write_text(evil)
    for loader in (load_train_config, load_recipe):
        with pytest.raises(BabeloraError) as err:
            loader(tmp_path / "c.yaml")
        one_line(err.value)


# ----------------------------------------------------------------------------- data root
def test_train_config_data_root_refuses_escaping_paths(tmp_path, capsys):

    from reference.corpus import config_yaml, write_corpus

    data = tmp_path / "data"
    write_corpus(data)  # audio/ under data/, manifest train.jsonl with relative paths
    outside = tmp_path / "elsewhere.jsonl"
    rows = (data / "train.jsonl").read_text().splitlines()
    row = json.loads(rows[0]) | {"audio_filepath": str(data / "audio" / "../../x.wav")}
    outside.write_text(json.dumps(row) + "\n")
    from babelora.train.data import read_manifests

    assert len(read_manifests([str(data / "train.jsonl")], str(data))) == len(rows)
    with pytest.raises(ManifestError) as err:
        read_manifests([str(outside)], str(data))
    one_line(err.value, "field 'audio_filepath'", "escapes the data root")
    cfg = config_yaml(data, tmp_path / "run", **{"data.train": [str(outside)]})
    code, line = cli(capsys, "train", cfg, f"data.data_root={data}")
    assert code == 2 and "escapes the data root" in line and f"{outside}:1" in line
