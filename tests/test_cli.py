"""The `cl-detect` command line as a user meets it: help texts, argument checks, and the one-line
messages (with exit status) of the `cl-detect` script for bad paths and Ctrl-C."""
import argparse
import sys

import pytest

from cl_detect import cli


def _command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, `data`'s subcommands as `data convert`, ..."""
    found = {}

    def visit(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found[f"{prefix} {name}".strip()] = child
                    visit(child, f"{prefix} {name}")

    visit(cli.build_parser(), "")
    return found


def test_every_option_is_explained_and_its_default_shown():
    parsers = _command_parsers()
    assert {"run", "pretrain", "table", "plot", "predict", "data convert", "data synth"} <= set(parsers)
    for name, parser in parsers.items():
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            flag = action.option_strings[-1]
            assert action.help, f"cl-detect {name} {flag} has no help text"
            if action.default not in (None, False, [], argparse.SUPPRESS):
                help_text = parser._get_formatter()._expand_help(action)
                assert "default" in help_text, f"cl-detect {name} {flag}: default {action.default!r} not shown"
    assert "(default: 640)" in parsers["predict"].format_help()


@pytest.mark.parametrize("argv, message", [
    (["run", "p.yaml", "--seeds", "-1"], "argument --seeds: -1 is not a non-negative integer"),
    (["run", "p.yaml", "--max-train-images", "0"], "argument --max-train-images: 0 is not a positive integer"),
    (["run", "p.yaml", "--jobs", "0"], "argument --jobs: 0 is not a positive integer"),
    (["run", "p.yaml", "--image-size", "big"], "argument --image-size: 'big' is not an integer"),
    (["run", "p.yaml", "--image-size", "500"], "argument --image-size: the image size must be a positive multiple "
                                               "of 32 (the detector's largest stride), got 500; the nearest are 480"),
])
def test_bad_numbers_stop_at_the_parser_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.build_parser().parse_args(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def _console(monkeypatch, argv: list[str]) -> int:
    monkeypatch.setattr(sys, "argv", ["cl-detect", *argv])
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    return cli.console_main()


def test_a_folder_or_a_file_in_the_wrong_place_is_one_message(tmp_path, monkeypatch, capsys):
    assert _console(monkeypatch, ["run", str(tmp_path)]) == 2  # a folder where the protocol YAML goes
    err = capsys.readouterr().err
    assert err.startswith("error: [Errno 21] Is a directory") and "name the file" in err and "Traceback" not in err
    (tmp_path / "results").write_text("")
    assert _console(monkeypatch, ["plot", str(tmp_path / "none.json"), "--out", str(tmp_path / "results")]) == 2
    assert "no such file" in capsys.readouterr().err
    monkeypatch.setattr("cl_detect.bench.results.load_results", lambda paths: [])
    assert _console(monkeypatch, ["table", "r.json", "--out", str(tmp_path / "results" / "t.md")]) == 2
    err = capsys.readouterr().err
    assert "File exists" in err and "name a folder" in err


@pytest.mark.parametrize("command, resumable", [("run", True), ("pretrain", True), ("table", False)])
def test_ctrl_c_stops_with_one_line_and_status_130(command, resumable, tmp_path, monkeypatch, capsys):
    def stopped(args):
        raise KeyboardInterrupt

    module = cli.COMMANDS[command][0]
    monkeypatch.setattr(f"{module}.run", stopped)
    assert _console(monkeypatch, [command, str(tmp_path / "x.yaml")]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"interrupted: cl-detect {command} stopped by Ctrl-C") and "Traceback" not in err
    assert ("Run the same command again to continue" in err) == resumable
    monkeypatch.setenv(cli.DEBUG_VARIABLE, "1")
    with pytest.raises(KeyboardInterrupt):
        cli.console_main()


def test_python_dash_m_behaves_as_the_script(tmp_path):
    """`python -m cl_detect.cli` is torchrun's entry: bad input is one message and status 2 there too."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "cl_detect.cli", "run", str(tmp_path / "missing.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr


@pytest.mark.parametrize("change, message", [
    ({"datasets": [{"path": "a.json", "fromat": "coco"}]}, "unknown key(s) of datasets entry 0: ['fromat']; valid:"),
    ({"datasets": ["a.json"]}, "key(s) of datasets entry 0 must be a mapping"),
    ({"test_sets": [{"path": None}]}, "'path' (key(s) of test_sets entry 0) must be str, got None"),
    ({"methods": ["finetune"]}, "methods must be a mapping of method name -> options"),
    ({"methods": {"finetune": {"prts": "head"}}}, "unknown option(s) for method 'finetune': ['prts']"),
    ({"synthetic_world": {"path": "w", "seeed": 1}}, "unknown synthetic_world setting(s) ['seeed']"),
    ({"output": "${CL_DETECT_PROBE_UNSET}/m.pt"}, "the environment variable CL_DETECT_PROBE_UNSET is not set"),
])
def test_a_misshapen_pretrain_config_is_one_message(change, message, tmp_path, monkeypatch, capsys):
    """These were TypeError / AttributeError tracebacks, or passed until the data were read (a misspelt
    method option) or wrote a literal `${VAR}` folder (variables were expanded in dataset paths only)."""
    import yaml

    monkeypatch.delenv("CL_DETECT_PROBE_UNSET", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"datasets": [{"path": "a.json"}], "output": "m.pt", "out_dir": "o", **change}))
    assert _console(monkeypatch, ["pretrain", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(config) in err and "Traceback" not in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_pretrain_on_a_cuda_device_the_machine_lacks_stops_before_reading_data(tmp_path, monkeypatch, capsys):
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"datasets": [{"path": str(tmp_path / "absent.json")}], "output": "m.pt",
                                      "out_dir": str(tmp_path / "o"), "train": {"device": "cuda"}}))
    assert _console(monkeypatch, ["pretrain", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: train.device is 'cuda', but this machine has 0 CUDA device(s)" in err
    assert "set train.device in the config" in err and "cl-detect run" not in err and "absent.json" not in err


def test_variables_are_expanded_in_every_pretrain_path(monkeypatch):
    from cl_detect.engine._pretrain_config import PretrainConfig

    monkeypatch.setenv("CL_DETECT_PROBE_DIR", "/data/x")
    config = PretrainConfig.from_dict({"datasets": [{"path": "a.json"}], "output": "${CL_DETECT_PROBE_DIR}/m.pt",
                                       "out_dir": "${CL_DETECT_PROBE_DIR}/run",
                                       "init_checkpoint": "${CL_DETECT_PROBE_DIR}/init.pt"})
    assert (config.output, config.out_dir, config.init_checkpoint) == ("/data/x/m.pt", "/data/x/run", "/data/x/init.pt")
