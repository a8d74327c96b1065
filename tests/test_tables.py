"""Result loading and the comparison table in md / latex / csv."""
import csv
import io
import json
import math

import numpy as np
import pytest
from scipy import stats

from _result_builders import result_dict, standard_results, write_results
from cl_detect.bench.results import ResultError, load_results
from cl_detect.bench.table import format_table
from cl_detect.cli import main


@pytest.fixture
def results(tmp_path):
    return load_results([write_results(tmp_path / "runs", standard_results())[0].parent])


def _md_row(text: str, method: str) -> list[str]:
    line = next(l for l in text.splitlines() if l.startswith(f"| {method} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_markdown_means_std_and_ci(results):
    text = format_table(results, "md")
    header = _md_row(text, "Method")
    row = _md_row(text, "finetune")
    assert row[header.index("n")] == "3"
    in_domain = np.array([np.mean([0.20 + 0.01 * s, 0.70]) for s in range(3)]) * 100
    low, high = stats.t.interval(0.95, 2, loc=in_domain.mean(), scale=in_domain.std(ddof=1) / np.sqrt(3))
    expected = f"{in_domain.mean():.1f} ± {in_domain.std(ddof=1):.1f} [{low:.1f}, {high:.1f}]"
    assert row[header.index("In-domain Avg")].replace("**", "") == expected
    # forgetting of task 1: max(a[1][1]) - a[2][1] = 0.60 - (0.20 + 0.01 s)
    forgetting = np.array([0.60 - (0.20 + 0.01 * s) for s in range(3)]) * 100
    assert row[header.index("F")].startswith(f"{forgetting.mean():.1f} ± {forgetting.std(ddof=1):.1f}")
    ratio = np.array([(0.10 + 0.02 * s) / 0.5 for s in range(3)]) * 100
    assert row[header.index("R coco")].startswith(f"{ratio.mean():.1f} ±")
    assert row[header.index("Trainable")] == "1.50M"


def test_best_marked_per_column(results):
    text = format_table(results, "md")
    header = _md_row(text, "Method")
    finetune, lora = _md_row(text, "finetune"), _md_row(text, "lora+distill")
    # lora+distill forgets less and retains more; finetune has the higher in-domain Avg
    assert lora[header.index("F")].startswith("**") and not finetune[header.index("F")].startswith("**")
    assert lora[header.index("R coco")].startswith("**")
    assert finetune[header.index("In-domain Avg")].startswith("**")


def test_failed_runs_listed_not_averaged(results):
    text = format_table(results, "md")
    assert "| distill |" not in text
    assert "- distill (seed 0): RuntimeError: CUDA out of memory" in text
    assert "Traceback" not in text


def test_failed_run_shows_the_exception_of_its_traceback(tmp_path):
    # the runner records traceback.format_exc(): the message is its last line, not "Traceback ..."
    error = ('Traceback (most recent call last):\n  File "train.py", line 92, in train_one_task\n'
             '    raise ValueError(...)\nValueError: 8 training images is less than one optimizer step\n')
    paths = write_results(tmp_path, standard_results()[:3] + [result_dict("ewc", 0, (0, 0), 0, status="failed",
                                                                           error=error)])
    text = format_table(load_results(paths), "md")
    assert "- ewc (seed 0): ValueError: 8 training images is less than one optimizer step" in text


def test_the_error_message_is_the_first_line_of_the_last_exception():
    import traceback

    from cl_detect.bench.results import error_message

    def failing():
        try:
            raise KeyError("inner")
        except KeyError:
            raise ValueError("data.json: 2 errors\n  error box_outside_image\n(fix the data, or pass the override)")

    try:
        failing()
    except ValueError:
        recorded = traceback.format_exc()  # what the runner writes; the message spans three lines
    assert error_message(recorded) == "ValueError: data.json: 2 errors"
    assert error_message("stopped by the user\nmore") == "stopped by the user" and error_message(None)


def test_latex_booktabs(results):
    text = format_table(results, "latex")
    for command in ("\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}"):
        assert command in text
    assert "lora+distill &" in text and "\\textbf{" in text and "$\\pm$" in text
    assert "% failed run (not averaged): distill seed 0" in text


def test_csv_plain_numbers(results):
    rows = list(csv.DictReader(io.StringIO(format_table(results, "csv"))))
    finetune = next(r for r in rows if r["method"] == "finetune")
    values = np.array([np.mean([0.20 + 0.01 * s, 0.70]) for s in range(3)])
    assert float(finetune["in_domain_avg_mean"]) == pytest.approx(values.mean(), abs=1e-6)
    assert float(finetune["in_domain_avg_std"]) == pytest.approx(values.std(ddof=1), abs=1e-6)
    low, _ = stats.t.interval(0.95, 2, loc=values.mean(), scale=values.std(ddof=1) / np.sqrt(3))
    assert float(finetune["in_domain_avg_ci_low"]) == pytest.approx(low, abs=1e-6)
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["method"] == "distill" and failed["in_domain_avg_mean"] == ""


def test_single_seed_has_no_spread(tmp_path):
    results = load_results(write_results(tmp_path, [result_dict("finetune", 0, (0.3, 0.7), 0.2)]))
    row = _md_row(format_table(results, "md"), "finetune")
    assert row[2] == "50.0" and "±" not in " ".join(row)


def test_not_applicable_entries_shown_as_dash(tmp_path):
    specialist = result_dict("specialist", 0, (0.3, 0.7), 0.2)
    specialist["accuracy_matrix"][1][1] = None  # task 2 not learned yet: no head for its vocabulary
    specialist["retention_matrix"][1][0] = specialist["retention_matrix"][2][0] = None
    text = format_table(load_results(write_results(tmp_path, [specialist])), "md")
    header, row = _md_row(text, "Method"), _md_row(text, "specialist")
    assert row[header.index("R coco")] == "–" and row[header.index("coco AP")] == "–"
    assert row[header.index("F")] == "30.0"  # 0.60 - 0.30 from the defined entries


def test_bad_result_names_the_file(tmp_path):
    bad = result_dict("finetune", 0, (0.3, 0.7), 0.2)
    bad["accuracy_matrix"] = bad["accuracy_matrix"][1:]
    path = write_results(tmp_path, [bad])[0]
    with pytest.raises(ResultError, match=f"{path.name}.*accuracy_matrix has shape"):
        load_results([path])
    del bad["status"]
    path.write_text(json.dumps(bad))
    with pytest.raises(ResultError, match="missing field"):
        load_results([path])


def test_a_result_cut_short_inside_a_folder_is_an_error_not_a_dropped_seed(tmp_path):
    paths = write_results(tmp_path, [result_dict("finetune", seed, (0.3, 0.7), 0.2) for seed in range(3)])
    paths[2].write_text(paths[2].read_text()[:100])
    with pytest.raises(ResultError, match=f"{paths[2].name}: not valid JSON"):
        load_results([tmp_path])


def test_a_run_given_twice_counts_once_and_two_files_for_one_seed_are_refused(tmp_path):
    paths = write_results(tmp_path / "runs", standard_results())
    once = load_results([paths[0].parent])
    again = load_results([paths[0].parent, paths[0].parent, paths[0]])  # the same files named twice
    assert [r.source for r in again] == [r.source for r in once]
    copy = tmp_path / "copy" / paths[0].name
    copy.parent.mkdir()
    copy.write_text(paths[0].read_text())
    with pytest.raises(ResultError, match=f"{paths[0].name} and .*copy.*seed would count twice"):
        load_results([paths[0].parent, copy])


def test_runs_of_one_protocol_over_other_tasks_are_refused(tmp_path):
    longer = result_dict("lora", 0, (0.3, 0.7), 0.2)
    longer["tasks"] = ["shapes", "domain", "third"]
    longer["accuracy_matrix"] = [row + [0.1] for row in longer["accuracy_matrix"]] + [[0.2, 0.3, 0.4]]
    longer["retention_matrix"] += [[0.3]]
    paths = write_results(tmp_path, [result_dict("finetune", 0, (0.3, 0.7), 0.2), longer])
    with pytest.raises(ResultError, match=r"different tasks \(\['shapes', 'domain'\] vs \['shapes', 'domain', 'third'\]\)"):
        load_results(paths)
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "plots")]) == 2  # not a shape error


def test_runs_of_one_protocol_over_other_data_are_refused(tmp_path):
    old, new = result_dict("finetune", 0, (0.3, 0.7), 0.2), result_dict("finetune", 1, (0.3, 0.7), 0.2)
    old["data_fingerprint"], new["data_fingerprint"] = "0" * 16, "1" * 16  # e.g. EgoHands on valid vs mini_val
    with pytest.raises(ResultError, match="made with other data or prompts"):
        load_results(write_results(tmp_path, [old, new]))
    new["data_fingerprint"] = None  # results written before fingerprints: nothing to compare
    assert len(load_results(write_results(tmp_path / "older", [old, new]))) == 2


def test_runs_of_one_protocol_scored_at_other_image_sizes_are_refused(tmp_path):
    # seeds scored at 320 and at 640 px were averaged into one row without a word
    small, large = result_dict("lora", 0, (0.3, 0.7), 0.2), result_dict("lora", 1, (0.3, 0.7), 0.2)
    small["config"], large["config"] = {"eval": {"image_size": 320}}, {"eval": {"image_size": 640}}
    with pytest.raises(ResultError, match=r"lora_1\.json are both protocol 'synthetic' .*image_size 320 vs 640"):
        load_results(write_results(tmp_path, [small, large]))
    large["config"] = {}  # not recorded: nothing to compare
    assert len(load_results(write_results(tmp_path / "older", [small, large]))) == 2
    # nor when the first file records none and the other two differ
    other = result_dict("lora", 2, (0.3, 0.7), 0.2)
    other["config"] = {"eval": {"image_size": 640}}
    first_older = [{**large, "seed": 0}, {**small, "seed": 1}, other]
    with pytest.raises(ResultError, match=r"image_size 320 vs 640"):
        load_results(write_results(tmp_path / "first_older", first_older))


def test_seeds_of_one_method_run_with_other_settings_are_refused(tmp_path):
    # lora rank 8 for seed 0 and rank 16 for seed 1 were averaged under one "lora" row
    runs = [result_dict("lora", seed, (0.3, 0.7), 0.2) for seed in (0, 1, 2)]
    for seed, run in enumerate(runs):
        run["settings"] = {"train": {"epochs": 4, "seed": seed}, "method_options": {"lora": {"rank": 8}}}
    assert len(load_results(write_results(tmp_path / "same", runs))) == 3  # the seed itself may differ
    runs[1]["settings"]["method_options"]["lora"]["rank"] = 16
    with pytest.raises(ResultError, match=r"lora_0\.json and .*lora_1\.json are seeds of method 'lora' .*other settings"):
        load_results(write_results(tmp_path / "changed", runs))
    del runs[1]["settings"]  # not recorded (an older file): nothing to compare
    assert len(load_results(write_results(tmp_path / "older", runs))) == 3
    # an older file first is no free pass for the two that differ
    runs[1]["settings"] = {"train": {"epochs": 4, "seed": 1}, "method_options": {"lora": {"rank": 8}}}
    del runs[0]["settings"]
    runs[2]["settings"]["method_options"]["lora"]["rank"] = 16
    with pytest.raises(ResultError, match=r"lora_1\.json and .*lora_2\.json are seeds of method 'lora'"):
        load_results(write_results(tmp_path / "first_older", runs))
    # a training field only one file records (added by a later version) is not a difference
    runs[2]["settings"] = {"train": {"epochs": 4, "seed": 2, "new_field": 1}, "method_options": {"lora": {"rank": 8}}}
    assert len(load_results(write_results(tmp_path / "new_field", runs))) == 3


def test_runs_of_one_protocol_over_other_retention_sets_are_refused(tmp_path):
    wider = result_dict("lora", 0, (0.3, 0.7), 0.2)
    wider["retention_sets"] = wider["retention_sets"] + ["lvis"]
    wider["retention_matrix"] = [row + [0.1] for row in wider["retention_matrix"]]
    paths = write_results(tmp_path, [result_dict("finetune", 0, (0.3, 0.7), 0.2), wider])
    with pytest.raises(ResultError, match=r"different retention sets \(\['coco'\] vs \['coco', 'lvis'\]\)"):
        load_results(paths)


def test_cli_writes_table(tmp_path):
    folder = write_results(tmp_path / "runs", standard_results())[0].parent
    out = tmp_path / "table.tex"
    assert main(["table", str(folder), "--format", "latex", "--out", str(out)]) == 0
    assert "\\toprule" in out.read_text()
    assert main(["table", str(tmp_path / "missing")]) == 2


def test_a_value_defined_by_fewer_seeds_says_so(tmp_path):
    runs = [result_dict("finetune", seed, (0.3, 0.7), 0.2) for seed in range(3)]
    runs[0]["retention_matrix"][0][0] = 0.0  # this seed's base AP is 0: its retention ratio is undefined
    text = format_table(load_results(write_results(tmp_path, runs)), "md")
    header, row = _md_row(text, "Method"), _md_row(text, "finetune")
    assert row[1] == "3" and row[header.index("R coco")].endswith("(n=2)")
    assert "(n=" not in row[header.index("In-domain Avg")]
    rows = list(csv.DictReader(io.StringIO(format_table(load_results(write_results(tmp_path, runs)), "csv"))))
    assert rows[0]["retention_coco_n"] == "2" and rows[0]["in_domain_avg_n"] == "3"


def test_names_with_special_characters_keep_the_table_intact(tmp_path):
    # a label or set name is free text: a pipe split markdown cells; LaTeX got `\\` (a line break),
    # a bare ^ (an error outside math) and a \label whose % commented out its closing brace
    run = result_dict("a|b ~^\\ 50%", 0, (0.3, 0.7), 0.2, protocol="p_1#%")
    run["retention_sets"] = ["coco|val"]
    results = load_results(write_results(tmp_path, [run]))
    text = format_table(results, "md")
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len({line.replace("\\|", "").count("|") for line in table_lines}) == 1  # one column count
    assert "| a\\|b ~^\\ 50% | 1 |" in text and "coco\\|val AP" in text
    latex = format_table(results, "latex")
    assert "a\\textbar{}b \\textasciitilde{}\\textasciicircum{}\\textbackslash{} 50\\% & 1 &" in latex
    assert "\\label{tab:p-1}" in latex and "coco\\textbar{}val AP" in latex


def test_latex_negative_values_use_a_minus_sign_not_a_hyphen(tmp_path):
    # final AP above the best earlier AP on task 1: negative forgetting (and its interval) in LaTeX math
    results = [result_dict("finetune", s, (0.65 + 0.01 * s, 0.70), 0.4) for s in range(3)]
    text = format_table(load_results(write_results(tmp_path, results)), "latex")
    row = next(line for line in text.splitlines() if line.startswith("finetune &"))
    forgetting = row.split(" & ")[3]
    assert forgetting.startswith("$-$6.0 $\\pm$ 1.0") and "[$-$" in forgetting
    assert "-" not in forgetting.replace("$-$", "")


def test_a_result_with_a_null_cell_on_the_diagonal_is_refused_naming_file_and_cell(tmp_path):
    broken = result_dict("specialist", 0, (0.3, 0.7), 0.2)
    broken["accuracy_matrix"][1][0] = None  # task 1 right after it was learned: BWT had silently become NaN
    path = write_results(tmp_path, [broken])[0]
    with pytest.raises(ResultError, match=rf"{path.name}: accuracy a\[1\]\[1\] .* is NaN"):
        load_results([path])


def test_a_result_with_a_non_numeric_seed_names_the_file(tmp_path):
    bad = result_dict("finetune", 0, (0.3, 0.7), 0.2)
    bad["seed"] = "s0"  # was a bare "invalid literal for int()" without the file
    path = write_results(tmp_path, [bad])[0]
    with pytest.raises(ResultError, match=rf"{path.name}: seed, .* must be numbers .*'s0'"):
        load_results([path])


def test_a_measured_zero_stays_zero_and_a_missing_measurement_is_nan(tmp_path):
    timed, untimed = result_dict("finetune", 0, (0.3, 0.7), 0.2), result_dict("finetune", 1, (0.3, 0.7), 0.2)
    timed["wall_time_s"], timed["peak_memory_mb"] = 0, 0.0  # used to read as NaN (`0 or nan`)
    untimed.pop("wall_time_s", None)
    untimed["peak_memory_mb"] = None
    first, second = load_results(write_results(tmp_path, [timed, untimed]))
    assert (first.wall_time_s, first.peak_memory_mb) == (0.0, 0.0)
    assert math.isnan(second.wall_time_s) and math.isnan(second.peak_memory_mb)


def test_a_value_that_rounds_to_zero_is_never_shown_as_minus_zero(tmp_path):
    # forgetting -0.04 points (final AP a hair above the best earlier one) read "-0.0", in LaTeX "$-$0.0"
    results = [result_dict("finetune", s, (0.6004, 0.70), 0.4) for s in range(3)]
    loaded = load_results(write_results(tmp_path, results))
    row = _md_row(format_table(loaded, "md"), "finetune")
    header = _md_row(format_table(loaded, "md"), "Method")
    assert row[header.index("F")] == "0.0 ± 0.0 [0.0, 0.0]" and row[header.index("BWT")].startswith("0.0 ±")
    latex_row = next(line for line in format_table(loaded, "latex").splitlines() if line.startswith("finetune &"))
    assert "$-$0.0" not in latex_row


def test_names_with_line_breaks_stay_on_one_table_line(tmp_path):
    # a line break in a label split the markdown row in two and ended the LaTeX comment of a failed run
    runs = [result_dict("lora\nr=8", 0, (0.3, 0.7), 0.2), result_dict("lora\nr=8", 1, (0, 0), 0, status="failed",
                                                                      error="ValueError: bad")]
    (tmp_path / "a").mkdir()
    for index, run in enumerate(runs):
        (tmp_path / "a" / f"{index}.json").write_text(json.dumps(run))
    results = load_results([tmp_path / "a"])
    assert "| lora r=8 | 1 |" in format_table(results, "md") and "- lora r=8 (seed 1)" in format_table(results, "md")
    latex = format_table(results, "latex").splitlines()
    assert any(line.startswith("lora r=8 & 1 &") for line in latex)
    assert "% failed run (not averaged): lora r=8 seed 1: ValueError: bad" in latex


def test_protocols_whose_names_read_alike_get_their_own_latex_labels(tmp_path):
    # both were \label{tab:odinw-mini}: every \ref pointed at the last table
    runs = [result_dict("finetune", 0, (0.3, 0.7), 0.2, protocol=name) for name in ("odinw mini", "odinw_mini")]
    (tmp_path / "a").mkdir()
    for index, run in enumerate(runs):
        (tmp_path / "a" / f"{index}.json").write_text(json.dumps(run))
    latex = format_table(load_results([tmp_path / "a"]), "latex")
    assert "\\label{tab:odinw-mini}" in latex and "\\label{tab:odinw-mini-2}" in latex


def test_parameter_counts_move_to_the_next_unit_when_they_round_up():
    from cl_detect.bench.table import Column, _number
    params = Column("trainable_params", "Trainable", "params")
    shown = [_number(params, value) for value in (999, 153_980, 999_996, 1_380_000, 999_999_999)]
    assert shown == ["1.00K", "153.98K", "1.00M", "1.38M", "1.00B"]
