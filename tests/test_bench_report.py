"""The command line a benchmark's JSON records: runnable elsewhere, without this machine's paths."""

from __future__ import annotations

import shlex

from bench._report import command_line


def test_recorded_command_names_paths_drops_the_device_command_and_quotes_the_rest(tmp_path):
    clips, work = str(tmp_path / "clips"), str(tmp_path / "work")
    argv = ["--clips", clips, f"--work={work}", "--device-command", "source .whl/install.sh && x",
            "--source", "clips: repo@abc {a,b}/", "--set", "train.compile_mode=default"]
    got = command_line("bench.tracking_real", argv, {"--clips": "<clips>", "--work": "<work>"})
    assert got.startswith("python -m bench.tracking_real --clips <clips> --work=<work> --source ")
    assert str(tmp_path) not in got and "install.sh" not in got
    assert shlex.split(got.split("--source ", 1)[1]) == ["clips: repo@abc {a,b}/", "--set", "train.compile_mode=default"]
    assert command_line("bench.train", ["--device-command=a b", "--out", "x.json"]) == "python -m bench.train --out x.json"
