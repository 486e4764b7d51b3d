"""A run stays one experiment (issue 25, findings 1, 2, 5 and 8): its identity is recorded at its
first step and a resume that changes it is refused in one line (or recorded, when deliberate);
every unreadable checkpoint is diagnosed by its real cause (another model config, pruned under
a reader, damage); a reader holds the checkpoint it reads while a live trainer prunes it; a run
whose checkpoints are gone is not started over; a checkpoint of ours without its manifest is
damage; an empty or model-less run config is refused.

Each test fails on the code before the issue: drift continued silently, the shape change was
called "truncated or corrupted", the reader failed on the pruned files, the run restarted from
step 0 (truncating metrics.jsonl), the manifest-less checkpoint loaded with a warning, and the
empty config trained a default model into ./runs/run."""

import itertools
import json
import os
import re
import shutil

import pytest

from engine_helpers import micro_config
from grow_megatron.config.base import CheckpointError, ConfigError
from grow_megatron.config.run import load_run_config
from grow_megatron.data.corpus import iter_default_corpus
from grow_megatron.engine.checkpoint import keys, latest_checkpoint, list_checkpoints, read_global_tensors, read_meta
from grow_megatron.engine.checkpoint.integrity import write_manifest
from grow_megatron.engine.faults import ENV, InjectedFault
from grow_megatron.training.identity import read_history
from grow_megatron.training.loop import train

STATIC = {"train.steps": 6, "growth.operator": "none", "growth.grow_steps": "null", "model.num_layers": 4}


@pytest.fixture(scope="module")
def lidas_at3(tmp_path_factory):
    """A LIDAS run stopped at step 3 (depth 8, after its first growth)."""
    d = tmp_path_factory.mktemp("lidas3")
    train(micro_config(d), stop_at=3)
    return d


def _copy(src, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(src, run)
    return run


def _files(run):
    """Bytes of the run's records: a refusal must leave them as they were."""
    return {
        n: (run / n).read_bytes()
        for n in ("metrics.jsonl", "config.yaml", "config_history.jsonl")
        if (run / n).exists()
    }


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def test_the_identity_is_recorded_at_the_first_step(lidas_at3):
    history = read_history(str(lidas_at3))
    assert [(r["step"], r["kind"]) for r in history] == [(0, "start")]
    fields = history[0]["identity"]
    assert fields["growth.operator"] == "lidas" and fields["train.global_batch_size"] == 4
    assert fields["model.hidden_size"] == 64 and len(fields["data.content"]) == 1  # the embedded corpus, digested
    meta = read_meta(latest_checkpoint(os.path.join(lidas_at3, "checkpoints")))
    assert meta["identity"]["fields"] == fields


@pytest.mark.parametrize(
    "override,field,recorded,now",
    [
        ({"growth.operator": "midas"}, "growth.operator", "lidas", "midas"),
        ({"train.global_batch_size": 8}, "train.global_batch_size", "4", "8"),
        ({"train.seed": 7}, "train.seed", "1234", "7"),
    ],
)
def test_drift_on_resume_is_refused_naming_each_field(lidas_at3, tmp_path, override, field, recorded, now):
    run = _copy(lidas_at3, tmp_path)
    before = _files(run)
    with pytest.raises(ConfigError) as err:
        train(micro_config(run, **override))
    msg = _one_line(err)
    assert f"{field}: recorded {recorded}, now {now}" in msg
    assert "new run_dir" in msg and "grow-megatron grow" in msg and "step 3" in msg
    if field == "train.seed":  # a field that may change deliberately says how
        assert "--set accept_changes=[train.seed]" in msg
    else:
        assert f"{field} cannot change within a run" in msg
    assert _files(run) == before


def test_hidden_size_change_is_named_as_a_config_change_not_damage(lidas_at3, tmp_path):
    """The old message called the checkpoint "truncated or corrupted" and advised moving it away."""
    run = _copy(lidas_at3, tmp_path)
    with pytest.raises(ConfigError) as err:
        train(micro_config(run, **{"model.hidden_size": 256, "model.ffn_hidden_size": 640}))
    msg = _one_line(err)
    assert "model.hidden_size: recorded 64, now 256" in msg and "corrupt" not in msg


def test_a_checkpoint_without_identity_of_another_shape_is_named_by_its_shapes(tmp_path):
    """A checkpoint written before identities were recorded, whose run's config.yaml is gone:
    the load itself names the tensor whose shape differs (nothing is damaged)."""
    run = tmp_path / "run"
    train(micro_config(run, **STATIC), stop_at=1)
    ckpt = latest_checkpoint(str(run / "checkpoints"))
    meta = json.loads((run / "checkpoints" / os.path.basename(ckpt) / "meta.json").read_text())
    for key in ("identity", "written_by"):
        meta.pop(key)
    with open(os.path.join(ckpt, "meta.json"), "w") as f:
        json.dump(meta, f)
    os.remove(os.path.join(ckpt, "manifest.json"))
    write_manifest(ckpt)
    os.remove(run / "config.yaml")
    with pytest.raises(ConfigError) as err:
        train(micro_config(run, **STATIC, **{"model.hidden_size": 96, "model.ffn_hidden_size": 256}))
    msg = _one_line(err)
    assert "final_layernorm.weight with shape [64], but this config's model needs shape [96]" in msg
    assert "another model config" in msg and "corrupt" not in msg


def _jsonl(path, docs):
    with open(path, "w") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc["text"]}) + "\n")
    return str(path)


def test_data_source_changes_are_refused_or_recorded_when_deliberate(tmp_path):
    docs = list(itertools.islice(iter_default_corpus(), 400))
    a, b = _jsonl(tmp_path / "a.jsonl", docs[:200]), _jsonl(tmp_path / "b.jsonl", docs[200:])
    run = tmp_path / "run"
    data = lambda path: {**STATIC, "data.datasets": f"[{{path: {path}}}]", "data.split": "'100,0,0'"}  # noqa: E731
    train(micro_config(run, **data(a)), stop_at=2)
    before = _files(run)
    with pytest.raises(ConfigError) as err:  # another source
        train(micro_config(run, **data(b)))
    assert "data.datasets: recorded" in _one_line(err) and "--set accept_changes=[data.content,data.datasets]" in str(
        err.value
    )
    with open(a, "a") as f:  # the same path, other content
        f.write(json.dumps({"text": "one more document"}) + "\n")
    with pytest.raises(ConfigError) as err:
        train(micro_config(run, **data(a)))
    assert "data.content: recorded" in _one_line(err) and "data.datasets" not in str(err.value)
    assert _files(run) == before
    # Declared deliberate: the run goes on from step 2 on b, and the history says so.
    res = train(micro_config(run, **data(b), **{"accept_changes": "[data.datasets,data.content]"}), stop_at=4)
    assert res.start_step == 2 and sorted(res.losses) == [2, 3]
    history = read_history(str(run))
    assert [(r["step"], r["kind"]) for r in history] == [(0, "start"), (2, "change")]
    assert sorted(history[1]["changes"]) == ["data.content", "data.datasets"]
    assert history[1]["changes"]["data.datasets"]["to"][0]["path"] == b
    saved = load_run_config(str(run / "config.yaml"))
    assert saved.data.datasets[0].path == b and saved.accept_changes == []
    # Recorded: `train RUN/config.yaml` (and the same command again) resume without declaring it.
    assert train(load_run_config(str(run / "config.yaml"))).start_step == 4
    # Fields the data position or the checkpoint depend on cannot be accepted.
    with pytest.raises(ConfigError, match="accept_changes = 'train.global_batch_size': cannot be accepted"):
        train(
            micro_config(
                run, **data(b), **{"train.global_batch_size": 8, "accept_changes": "[train.global_batch_size]"}
            )
        )


def test_extending_train_steps_is_recorded_with_its_step(tmp_path):
    run = tmp_path / "run"
    train(micro_config(run, **STATIC))
    res = train(micro_config(run, **{**STATIC, "train.steps": 8}))
    assert res.start_step == 6 and res.end_step == 8
    history = read_history(str(run))
    assert history[-1]["step"] == 6 and history[-1]["changes"] == {"train.steps": {"from": 6, "to": 8}}
    assert history[-1]["config"]["train"]["steps"] == 8 and history[0]["config"]["train"]["steps"] == 6


def test_a_run_whose_checkpoints_are_gone_is_not_started_over(lidas_at3, tmp_path):
    """Moving the checkpoints away (as the old "corrupted" message advised) used to start the run
    over from step 0 and truncate metrics.jsonl."""
    run = _copy(lidas_at3, tmp_path)
    root = run / "checkpoints"
    before = _files(run)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    for d in list_checkpoints(str(root)):
        shutil.move(str(root / d), str(tmp_path / d))
    with pytest.raises(ConfigError) as err:
        train(micro_config(run))
    msg = _one_line(err)
    assert "held checkpoints but none is complete and readable now (latest names step_00000003)" in msg
    assert "metrics.jsonl" in msg and "checkpoint.resume=fresh" in msg
    assert _files(run) == before
    # A step directory whose meta.json is gone is no checkpoint either, and no reason to start over.
    shutil.move(str(tmp_path / "step_00000003"), str(root / "step_00000003"))
    os.remove(root / "step_00000003" / "meta.json")
    with pytest.raises(ConfigError, match="step_00000003 without a readable meta.json"):
        train(micro_config(run))
    assert _files(run) == before


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path, monkeypatch):
    """Nothing was ever checkpointed (the first save was killed): starting over is right."""
    run = tmp_path / "run"
    monkeypatch.setenv(ENV, "save.written@2:raise")
    with pytest.raises(InjectedFault):
        train(micro_config(run, **STATIC), stop_at=2)
    monkeypatch.delenv(ENV)
    assert latest_checkpoint(str(run / "checkpoints")) is None
    assert train(micro_config(run, **STATIC), stop_at=1).start_step == 0


def test_a_reader_holds_the_checkpoint_a_live_trainer_prunes(tmp_path):
    """`eval RUN` beside a trainer: the trainer prunes (keep_last) the checkpoint the reader
    opened; the reader still reads exactly that checkpoint's tensors."""
    from grow_megatron.convert.api import NativeSource

    run = tmp_path / "run"
    every = {**STATIC, "checkpoint.interval": 1, "checkpoint.keep_last": 1}
    train(micro_config(run, **every), stop_at=2)
    ckpt = latest_checkpoint(str(run / "checkpoints"))
    want = read_global_tensors(shutil.copytree(ckpt, tmp_path / "copy"))
    src = NativeSource(str(run))
    assert src.ckpt_dir == ckpt
    train(micro_config(run, **every), stop_at=4)  # the live trainer: saves steps 3 and 4, prunes step 2
    assert not os.path.exists(ckpt)
    for name in src.reader.shapes:
        assert src.read(name).equal(want[keys.model_key(name)]), name
    held = src.reader.dir
    assert held != ckpt
    del src
    assert not os.path.exists(held)  # the hold goes with its reader
    assert not [d for d in os.listdir(run / "checkpoints") if d.startswith(".held-")]


def test_a_checkpoint_pruned_before_it_is_held_is_named_as_pruned(tmp_path):
    from grow_megatron.convert.native import NativeReader

    run = tmp_path / "run"
    train(micro_config(run, **STATIC), stop_at=1)
    ckpt = latest_checkpoint(str(run / "checkpoints"))
    shutil.rmtree(ckpt)
    with pytest.raises(CheckpointError, match="was removed while it was being read .* nothing is damaged"):
        NativeReader(ckpt)
    with pytest.raises(CheckpointError, match="was removed while it was being read"):
        read_global_tensors(ckpt)


def test_a_checkpoint_of_ours_without_its_manifest_is_refused_as_damaged(tmp_path):
    """Deleting manifest.json and overwriting 64 bytes of a shard used to load with an "older
    grow_megatron" warning, and the next steps were NaN."""
    run = tmp_path / "run"
    train(micro_config(run, **STATIC), stop_at=1)
    ckpt = latest_checkpoint(str(run / "checkpoints"))
    os.remove(os.path.join(ckpt, "manifest.json"))
    shard = next(f for f in sorted(os.listdir(ckpt)) if f.endswith(".distcp"))
    with open(os.path.join(ckpt, shard), "r+b") as f:
        f.seek(256)
        f.write(b"\xff" * 64)
    with pytest.raises(CheckpointError) as err:
        train(micro_config(run, **STATIC))
    msg = _one_line(err)
    assert "has no manifest.json, but its meta.json says grow_megatron" in msg and "damaged" in msg
    from grow_megatron.convert.native import NativeReader

    with pytest.raises(CheckpointError, match="has no manifest.json, but"):
        NativeReader(ckpt)


def test_a_checkpoint_from_before_manifests_still_loads_with_a_warning():
    """tests/data/ckpt_v1 (no manifest, no written_by): not damage, an older format."""
    from grow_megatron.convert.native import NativeReader

    ckpt = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "ckpt_v1", "step_00000002")
    with pytest.warns(UserWarning, match="no manifest.json"):
        reader = NativeReader(ckpt)
    assert reader.depth == 2


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("", "is empty"),
        ("# all commented out\n", "is empty"),
        ("- model\n- train\n", "must hold a mapping of sections"),
        ("name: x\nrun_dir: somewhere\n", "names no model (it has name, run_dir)"),
    ],
)
def test_a_run_config_without_a_run_is_refused_in_one_line(tmp_path, monkeypatch, capsys, text, fragment):
    """An empty config.yaml (say, of an interrupted `grow`) used to train a default model into
    ./runs/run."""
    from grow_megatron.cli import main as cli_main

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_run_config(str(cfg))
    assert cli_main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and str(cfg) in err[0], err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "somewhere").exists()
