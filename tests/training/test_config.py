from importlib import resources
from pathlib import Path

import pytest
import yaml

from tensile.config import ConfigError, TrainingConfig, config_from_dict, dump_config, load_config


def _paths(error: ConfigError) -> list[str]:
    return [path for path, _ in error.problems]


def _write(directory: Path, text: str, name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


# --- config_from_dict: one bad field at a time ----------------------------------------------------

BAD_CONFIGS = [
    ("unknown top-level key", {"optimiser": {"lr": 1.0}}, "optimiser"),
    ("unknown nested key", {"batch": {"global_batchsize": 16}}, "batch.global_batchsize"),
    ("unknown key two levels down", {"data": {"generate": {"num_sample": 3}}}, "data.generate.num_sample"),
    ("negative global batch", {"batch": {"global_batch_size": -16}}, "batch.global_batch_size"),
    ("zero global batch", {"batch": {"global_batch_size": 0}}, "batch.global_batch_size"),
    ("min workers above max", {"elastic": {"min_workers": 3, "max_workers": 2}}, "elastic.max_workers"),
    ("zero min workers", {"elastic": {"min_workers": 0}}, "elastic.min_workers"),
    ("ZeRO stage 5", {"zero": {"stage": 5}}, "zero.stage"),
    ("string for int", {"run": {"steps": "100"}}, "run.steps"),
    ("bool for int", {"batch": {"global_batch_size": True}}, "batch.global_batch_size"),
    ("float for int", {"run": {"steps": 1.5}}, "run.steps"),
    ("string for float", {"optimizer": {"lr": "fast"}}, "optimizer.lr"),
    ("bool for float", {"elastic": {"collective_timeout_s": False}}, "elastic.collective_timeout_s"),
    ("int for string", {"data": {"url": 5}}, "data.url"),
    ("string inside int list", {"batch": {"micro_batch_sizes": [1, "2"]}}, "batch.micro_batch_sizes"),
    ("scalar for list", {"batch": {"micro_batch_sizes": 4}}, "batch.micro_batch_sizes"),
    ("zero micro-batch size", {"batch": {"micro_batch_sizes": [0, 2]}}, "batch.micro_batch_sizes"),
    ("keep only one checkpoint", {"checkpoint": {"keep_last": 1}}, "checkpoint.keep_last"),
    ("bad nested section value", {"data": {"generate": {"num_samples": 0}}}, "data.generate.num_samples"),
    ("max workers above global batch",
     {"batch": {"global_batch_size": 4}, "elastic": {"max_workers": 8}}, "elastic.max_workers"),
    ("min nodes above max", {"elastic": {"min_nodes": 3, "max_nodes": 2}}, "elastic.max_nodes"),
    ("zero min nodes", {"elastic": {"min_nodes": 0}}, "elastic.min_nodes"),
    ("zero processes per node", {"elastic": {"processes_per_node": 0}}, "elastic.processes_per_node"),
    ("world size above global batch",
     {"batch": {"global_batch_size": 16}, "elastic": {"max_nodes": 4, "processes_per_node": 8}}, "elastic.max_nodes"),
    ("old and new node names disagree", {"elastic": {"min_workers": 1, "min_nodes": 2}}, "elastic.min_workers"),
    ("d_model not divisible by n_heads", {"model": {"d_model": 100, "n_heads": 3}}, "model"),
    ("sequence too short to predict", {"model": {"seq_len": 1}}, "model.seq_len"),
    ("section is not a mapping", {"zero": 5}, "zero"),
    ("section is a list", {"elastic": [1, 2]}, "elastic"),
    ("top level is not a mapping", ["run", "model"], "<top>"),
    ("bad run name", {"run": {"name": "my run!"}}, "run.name"),
    ("train longer to fewer steps", {"run": {"steps": 10, "extend_from_steps": 20}}, "run.extend_from_steps"),
    ("train longer to the same steps", {"run": {"steps": 10, "extend_from_steps": 10}}, "run.extend_from_steps"),
    ("negative extend_from_steps", {"run": {"extend_from_steps": -1}}, "run.extend_from_steps"),
]


@pytest.mark.parametrize(("data", "path"), [case[1:] for case in BAD_CONFIGS],
                         ids=[case[0] for case in BAD_CONFIGS])
def test_config_from_dict_reports_the_exact_property_path(data, path):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)

    assert _paths(caught.value) == [path]
    assert f"  {path}: " in str(caught.value)


def test_config_from_dict_message_quotes_the_bad_value():
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"zero": {"stage": 5}, "run": {"steps": "many"}})

    messages = dict(caught.value.problems)
    assert "5" in messages["zero.stage"]
    assert "'many'" in messages["run.steps"]


def test_config_from_dict_cross_check_names_the_global_batch():
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"batch": {"global_batch_size": 4}, "elastic": {"max_workers": 8}})

    (message,) = [m for _, m in caught.value.problems]
    assert "batch.global_batch_size (4)" in message and "world size 8" in message


@pytest.mark.parametrize(("elastic", "fix"), [
    ({"min_nodes": 1, "max_nodes": 4, "processes_per_node": 8}, "lower elastic.max_nodes to 2 or raise "
                                                                 "batch.global_batch_size to 32"),
    ({"min_nodes": 3, "max_nodes": 4, "processes_per_node": 8}, "lower elastic.processes_per_node to 4 or raise"),
    ({"min_nodes": 1, "max_nodes": 1, "processes_per_node": 32}, "lower elastic.processes_per_node to 16"),
])
def test_config_from_dict_world_size_check_counts_processes_and_names_a_fix_that_works(elastic, fix):
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"batch": {"global_batch_size": 16}, "elastic": elastic})

    ((path, message),) = caught.value.problems
    assert path == "elastic.max_nodes" and fix in message, message


def test_config_from_dict_reads_old_node_names_and_notes_them():
    notes: list[tuple[str, str]] = []
    config = config_from_dict({"elastic": {"min_workers": 2, "max_workers": 3, "max_nodes": 3}}, notes=notes)

    assert (config.elastic.min_nodes, config.elastic.max_nodes, config.elastic.processes_per_node) == (2, 3, 1)
    assert [path for path, _ in notes] == ["elastic.min_workers", "elastic.max_workers"]
    assert "rename it to min_nodes" in notes[0][1]
    assert config_from_dict({"elastic": {"min_nodes": 2, "max_nodes": 3}}) == config


def test_config_from_dict_old_and_new_name_with_different_values_is_refused_naming_both():
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"elastic": {"max_workers": 4, "max_nodes": 2}})

    ((path, message),) = caught.value.problems
    assert path == "elastic.max_workers" and "elastic.max_nodes" in message and "remove max_workers" in message


def test_config_from_dict_unknown_key_lists_the_known_keys():
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"batch": {"global_batchsize": 16}})

    (message,) = [m for _, m in caught.value.problems]
    assert "global_batch_size" in message and "micro_batch_sizes" in message


def test_config_from_dict_reports_every_problem_together():
    data = {
        "run": {"steps": "100"},
        "batch": {"global_batchsize": 16, "global_batch_size": -1},
        "zero": {"stage": 5},
        "elastic": {"min_workers": 3, "max_workers": 2},
        "checkpoint": {"keep_last": 1},
        "model": {"d_model": 100, "n_heads": 3},
        "shoes": 2,
    }
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data, source="job.yaml")

    assert sorted(_paths(caught.value)) == sorted([
        "run.steps", "batch.global_batchsize", "batch.global_batch_size", "zero.stage",
        "elastic.max_workers", "checkpoint.keep_last", "model", "shoes",
    ])
    assert str(caught.value).startswith("8 problem(s) in job.yaml:")


def test_config_from_dict_empty_mapping_gives_the_defaults():
    assert config_from_dict({}) == TrainingConfig()
    assert config_from_dict(None) == TrainingConfig()


def test_config_from_dict_converts_integers_in_float_fields():
    config = config_from_dict({"optimizer": {"lr": 1, "betas": [0, 0]}, "elastic": {"park_timeout_s": 30}})

    assert type(config.optimizer.lr) is float
    assert [type(b) for b in config.optimizer.betas] == [float, float]
    assert type(config.elastic.park_timeout_s) is float


def test_config_from_dict_accepts_null_for_optional_section():
    assert config_from_dict({"data": {"generate": None}}).data.generate is None
    assert config_from_dict({"data": {"generate": {"num_samples": 5}}}).data.generate.num_samples == 5


# --- load_config ---------------------------------------------------------------------------------


def test_load_config_missing_file_is_a_config_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)

    assert _paths(caught.value) == ["<file>"]
    assert str(missing) in str(caught.value)


def test_load_config_invalid_yaml_is_a_config_error(tmp_path):
    path = _write(tmp_path, "run: {name: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert _paths(caught.value) == ["<file>"]
    assert "not valid YAML" in str(caught.value)
    assert caught.value.source == str(path)


def test_load_config_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)

    assert _paths(caught.value) == ["<file>"]
    assert str(tmp_path) in str(caught.value)


def test_load_config_binary_file_is_a_config_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert _paths(caught.value) == ["<file>"]


def test_load_config_reports_every_problem_in_the_file(tmp_path):
    path = _write(tmp_path, (
        "batch: {global_batchsize: 16, global_batch_size: -2}\n"
        "zero: {stage: 5}\n"
        "elastic: {min_workers: 3, max_workers: 2}\n"
        "checkpoint: {keep_last: 1}\n"
    ))
    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert sorted(_paths(caught.value)) == sorted([
        "batch.global_batchsize", "batch.global_batch_size", "zero.stage", "elastic.max_workers",
        "checkpoint.keep_last",
    ])
    assert caught.value.source == str(path)


def test_load_config_resolves_relative_paths_against_the_file_directory(tmp_path, monkeypatch):
    (tmp_path / "jobs").mkdir()
    path = _write(tmp_path / "jobs", "data: {url: corpus/v1}\ncheckpoint: {shared_dir: ../shared, local_dir: scratch}\n")
    monkeypatch.chdir(tmp_path)  # the working directory must not matter

    config = load_config("jobs/config.yaml")

    base = path.resolve().parent
    assert config.data.url == str(base / "corpus/v1")
    assert config.checkpoint.shared_dir == str(base / "../shared")
    assert config.checkpoint.local_dir == str(base / "scratch")


def test_load_config_leaves_urls_and_absolute_paths_alone(tmp_path):
    absolute = str(tmp_path / "elsewhere")
    path = _write(tmp_path, f"data: {{url: 's3://bucket/corpus'}}\ncheckpoint: {{shared_dir: '{absolute}'}}\n")

    config = load_config(path)

    assert config.data.url == "s3://bucket/corpus"
    assert config.checkpoint.shared_dir == absolute


def test_load_config_empty_file_gives_defaults_with_resolved_paths(tmp_path):
    config = load_config(_write(tmp_path, ""))

    assert config.run == TrainingConfig().run
    assert config.data.url == str(tmp_path.resolve() / "data")


def test_load_config_overrides_apply_to_missing_and_empty_sections(tmp_path):
    path = _write(tmp_path, "zero:\nrun: {steps: 5}\n")

    config = load_config(path, overrides={"zero.stage": 2, "run.steps": 7, "elastic.max_workers": 2})

    assert (config.zero.stage, config.run.steps, config.elastic.max_nodes) == (2, 7, 2)


@pytest.mark.parametrize("override", ["elastic.max_nodes", "elastic.max_workers"])
def test_load_config_node_override_wins_over_the_file_by_either_name(tmp_path, override):
    path = _write(tmp_path, "elastic: {max_workers: 3}\n")

    assert load_config(path, overrides={override: 2}).elastic.max_nodes == 2


def test_load_config_precision_override_lands_in_the_shorthand_form(tmp_path):
    path = _write(tmp_path, "precision: bf16\nzero: {stage: 3}\n")

    config = load_config(path, overrides={"precision.accumulate_grads_in_fp32": True})

    assert (config.precision.dtype, config.precision.accumulate_grads_in_fp32) == ("bf16", True)
    assert load_config(path, overrides={"precision.dtype": "fp32"}).precision.dtype == "fp32"


def test_load_config_overrides_are_validated(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, "run: {steps: 5}\n"), overrides={"zero.stage": 9})

    assert _paths(caught.value) == ["zero.stage"]


def test_load_config_reads_back_what_dump_config_wrote(tmp_path):
    original = load_config(resources.files("tensile.configs").joinpath("demo.yaml"))
    path = tmp_path / "dumped.yaml"

    dump_config(original, path)

    assert load_config(path) == original


def test_load_config_packaged_demo_config_loads_cleanly():
    config = load_config(resources.files("tensile.configs").joinpath("demo.yaml"))

    assert config.run.name == "tensile-demo"
    assert (config.elastic.min_nodes, config.elastic.max_nodes, config.elastic.processes_per_node) == (1, 3, 1)
    assert config.batch.global_batch_size == 16
    assert Path(config.checkpoint.shared_dir).is_absolute()


# --- trajectory_hash ------------------------------------------------------------------------------


def _hash(**sections):
    return config_from_dict(sections).trajectory_hash()


def test_trajectory_hash_ignores_paths_and_node_and_process_counts():
    base = _hash()

    assert _hash(data={"url": "s3://other/corpus"}) == base
    assert _hash(checkpoint={"shared_dir": "/mnt/x", "local_dir": "/tmp/y", "every_steps": 3}) == base
    assert _hash(elastic={"min_workers": 2, "max_workers": 8, "max_failures": 9}) == base
    assert _hash(elastic={"min_nodes": 1, "max_nodes": 2, "processes_per_node": 8}) == base
    assert _hash(batch={"micro_batch_sizes": [2, 16]}) == base
    assert _hash(run={"name": "renamed", "log_every": 1}) == base


@pytest.mark.parametrize("sections", [
    {"optimizer": {"lr": 1e-4}},
    {"run": {"seed": 99}},
    {"batch": {"global_batch_size": 32}},
    {"model": {"d_model": 64}},
    {"zero": {"stage": 2}},
], ids=["lr", "seed", "global batch", "model", "zero stage"])
def test_trajectory_hash_changes_with_what_shapes_training(sections):
    assert _hash(**sections) != _hash()


def test_trajectory_hash_is_stable_for_equal_configs(tmp_path):
    text = yaml.safe_dump({"optimizer": {"lr": 0.01}, "run": {"seed": 3}})
    first = load_config(_write(tmp_path, text, "a.yaml")).trajectory_hash()
    second = config_from_dict(yaml.safe_load(text)).trajectory_hash()

    assert first == second
    assert len(first) == 16
