"""Relative paths in a run config: data paths follow the config file, run_dir and --set paths
follow the current directory, and the run's saved config.yaml holds them all absolute."""

import os

import yaml

from grow_megatron.config.run import dump_run_config, load_run_config, read_run_info

CONFIG = """\
run_dir: out/run1
model: {preset: tiny}
data:
  tokenizer: tok/tokenizer.json
  cache_dir: ../cache
  datasets:
    - {path: corpus/docs.jsonl}
    - {path: hf:corpus/hubdir:cfg}
    - {path: "hf:HuggingFaceTB/smollm-corpus:fineweb-edu-dedup", weight: 0}
"""


def test_paths_follow_the_config_file_and_are_saved_absolute(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "project" / "configs"
    (cfg_dir / "corpus" / "hubdir").mkdir(parents=True)
    (cfg_dir / "run.yaml").write_text(CONFIG)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    cfg = load_run_config("../project/configs/run.yaml")
    assert cfg.data.tokenizer == str(cfg_dir / "tok" / "tokenizer.json")
    assert cfg.data.cache_dir == str(tmp_path / "project" / "cache")
    assert cfg.data.datasets[0].path == str(cfg_dir / "corpus" / "docs.jsonl")
    # A local directory laid out like a hub dataset is resolved; a hub name stays a name.
    assert cfg.data.datasets[1].path == f"hf:{cfg_dir / 'corpus' / 'hubdir'}:cfg"
    assert cfg.data.datasets[2].path == "hf:HuggingFaceTB/smollm-corpus:fineweb-edu-dedup"
    # run_dir is an output location: from the current directory, like --out.
    assert cfg.run_dir == str(elsewhere / "out" / "run1")

    # What the run saves is absolute, so it reads the same from any directory.
    saved = tmp_path / "saved.yaml"
    saved.write_text(dump_run_config(cfg))
    raw = yaml.safe_load(saved.read_text())
    assert raw["run_dir"] == cfg.run_dir and raw["data"]["tokenizer"] == cfg.data.tokenizer
    monkeypatch.chdir(tmp_path)
    again = load_run_config(str(saved))
    assert again.data == cfg.data and again.run_dir == cfg.run_dir
    assert read_run_info(str(saved)).data == cfg.data


def test_override_paths_follow_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "run.yaml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    cfg = load_run_config("configs/run.yaml", ["data.tokenizer=mytok", "run_dir=runs/x"])
    assert cfg.data.tokenizer == str(tmp_path / "mytok")
    assert cfg.run_dir == str(tmp_path / "runs" / "x")
    assert os.path.isabs(cfg.data.datasets[0].path)


def test_read_run_info_resolves_from_the_config_file(tmp_path, monkeypatch):
    """convert / eval / analyze read a run's config.yaml from anywhere."""
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: {preset: tiny, vocab_size: 100}\ndata: {tokenizer: ../../tok}\n")
    monkeypatch.chdir(tmp_path / "runs")
    assert read_run_info("r/config.yaml").data.tokenizer == str(tmp_path / "tok")
