"""Figures: heatmaps per method, Pareto scatter with WiSE curves, per-task curves."""
from _result_builders import result_dict, standard_results, write_results
from cl_detect.bench.plot import plot_all
from cl_detect.bench.results import load_results
from cl_detect.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_all_writes_pngs(tmp_path):
    results = load_results([write_results(tmp_path / "runs", standard_results())[0].parent])
    written = plot_all(results, tmp_path / "figures")
    names = sorted(p.name for p in written)
    # 2 finished methods -> 2 heatmaps; the failed run draws nothing; 1 pareto, 1 curves
    assert names == ["synthetic_finetune_accuracy.png", "synthetic_lora+distill_accuracy.png",
                     "synthetic_pareto.png", "synthetic_task_curves.png"]
    for path in written:
        assert path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_wise_points_from_rows(tmp_path):
    results = load_results(write_results(tmp_path, standard_results()))
    lora = next(r for r in results if r.method == "lora+distill")
    assert lora.wise_points() == [(0.5, 0.475, 0.98), (1.0, 0.525, 0.94)]


def test_no_retention_sets_skips_pareto(tmp_path):
    result = result_dict("finetune", 0, (0.3, 0.7), 0.2, protocol="plain")
    result["retention_sets"], result["retention_matrix"] = [], [[], [], []]
    assert main(["plot", str(write_results(tmp_path, [result])[0]), "--out", str(tmp_path / "fig")]) == 0
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["plain_finetune_accuracy.png",
                                                                    "plain_task_curves.png"]


def test_only_failed_runs_is_an_error_not_a_silent_success(tmp_path, capsys):
    failed = result_dict("finetune", 0, (0.3, 0.7), 0.2, status="failed", error="Traceback ...")
    assert main(["plot", str(write_results(tmp_path, [failed])[0]), "--out", str(tmp_path / "fig")]) == 1
    assert "no finished runs" in capsys.readouterr().err


def test_names_that_read_alike_as_file_names_get_their_own_files(tmp_path):
    # "a b", "a|b" and two non-ASCII names all became a_b / an empty part: one figure overwrote the other
    runs = [result_dict(method, 0, (0.3, 0.7), 0.2, protocol="p q") for method in ("a b", "a|b", "ä", "ö")]
    written = plot_all(load_results(write_results(tmp_path / "runs", runs)), tmp_path / "fig")
    heatmaps = [p.name for p in written if p.name.endswith("_accuracy.png")]
    assert len(set(heatmaps)) == 4 and len(list((tmp_path / "fig").iterdir())) == 6
    assert all(name.startswith("p_q-") for name in heatmaps)


def test_dollar_signs_in_names_are_drawn_as_text_not_math(tmp_path):
    # "$^$" was parsed as matplotlib math text and stopped `cl-detect plot` with a ParseSyntaxException
    runs = [result_dict(method, 0, (0.3, 0.7), 0.2, protocol="price $^$ set") for method in ("a$b$", "lora")]
    written = plot_all(load_results(write_results(tmp_path / "runs", runs)), tmp_path / "fig")
    assert len(written) == 4 and all(path.read_bytes().startswith(b"\x89PNG") for path in written)


def test_wise_points_read_only_ap_rows(tmp_path):
    # rows are typed by `metric`: an AP50 sweep row of the same set overwrote the AP one
    run = result_dict("wise", 0, (0.3, 0.7), 0.2, wise={0.5: (0.45, 0.5, 0.49)})
    run["rows"] += [{**row, "metric": "AP50", "value": 0.99} for row in run["rows"]]
    assert load_results(write_results(tmp_path, [run]))[0].wise_points() == [(0.5, 0.475, 0.98)]


def test_wise_alphas_that_differ_across_seeds_are_named(tmp_path, caplog):
    # seeds swept on other grids: the curve silently lost every alpha (empty intersection)
    runs = [result_dict("wise", 0, (0.3, 0.7), 0.2, wise={0.0: (0.1, 0.1, 0.5), 0.5: (0.3, 0.3, 0.3)}),
            result_dict("wise", 1, (0.3, 0.7), 0.2, wise={0.25: (0.1, 0.1, 0.5)})]
    with caplog.at_level("WARNING", logger="cl_detect.bench.plot"):
        plot_all(load_results(write_results(tmp_path / "runs", runs)), tmp_path / "fig")
    assert "seed 0: [0.0, 0.5], seed 1: [0.25]" in caplog.text and "no curve is drawn" in caplog.text


def test_no_pareto_figure_when_no_method_has_a_retention_ratio(tmp_path, caplog):
    # every base AP 0: each point was NaN and an empty figure was written as if it were a result
    runs = [result_dict("finetune", seed, (0.3, 0.7), 0.2) for seed in range(2)]
    for run in runs:
        run["retention_matrix"][0][0] = 0.0
    with caplog.at_level("WARNING", logger="cl_detect.bench.plot"):
        written = plot_all(load_results(write_results(tmp_path / "runs", runs)), tmp_path / "fig")
    assert sorted(p.name for p in written) == ["synthetic_finetune_accuracy.png", "synthetic_task_curves.png"]
    assert "no method has a retention ratio" in caplog.text


def test_every_method_keeps_its_own_colour_past_ten_methods(tmp_path, monkeypatch):
    # tab10 cycled: with 13 methods ewc and wise, finetune and zeroshot were drawn alike in both figures
    import cl_detect.bench.plot as plot_module
    looks = {}

    def record(fig, path):
        if path.name.endswith("_task_curves.png"):
            looks["curves"] = {(line.get_label(), line.get_color(), line.get_marker(), str(line.get_linestyle()))
                               for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")}
        plot_module.plt.close(fig)
        return path

    monkeypatch.setattr(plot_module, "_save", record)
    runs = [result_dict(f"m{index:02d}", 0, (0.3, 0.7), 0.2) for index in range(13)]
    plot_all(load_results(write_results(tmp_path / "runs", runs)), tmp_path / "fig")
    assert len(looks["curves"]) == 13 and len({look[1:] for look in looks["curves"]}) == 13
