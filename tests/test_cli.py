"""The `vlm-rl` command line a user meets first: help text, config keys, typo hints, both flag styles."""

from __future__ import annotations

import pytest

from vlm_rl.cli import build_parser, main, normalise_args


def test_top_level_help_is_for_users(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "vlm-rl demo" in out and "dispatcher" not in out


def test_grpo_help_lists_config_keys_with_type_default_and_description(capsys):
    with pytest.raises(SystemExit):
        main(["grpo", "--help"])
    out = capsys.readouterr().out
    assert "num_generations [NUM_GENERATIONS] (int, default 4)" in out
    assert "completions per prompt" in out and "loss_type (grpo|dr_grpo|dapo|bnpo, default 'dapo')" in out


def test_typo_names_the_nearest_key(capsys, tmp_path):
    assert main(["grpo", "num_generation=8", f"output_dir={tmp_path}"]) == 2
    assert "did you mean num_generations?" in capsys.readouterr().err


def test_both_flag_styles_everywhere():
    parser = build_parser()
    assert normalise_args(parser, ["sft", "--max_steps", "3", "--num-epochs=2", "--bf16"]) == \
        ["sft", "max_steps=3", "num_epochs=2", "bf16=true"]
    assert normalise_args(parser, ["grpo", "--config", "x.yaml", "beta=0"]) == ["grpo", "--config", "x.yaml", "beta=0"]
    args = parser.parse_args(normalise_args(parser, ["eval", "model_path=tiny-qwen3-vl", "val_data=v.jsonl",
                                                     "no_mlflow=true", "batch-size=2"]))
    assert (args.model_path, args.val_data, args.no_mlflow, args.batch_size) == ("tiny-qwen3-vl", "v.jsonl", True, 2)
