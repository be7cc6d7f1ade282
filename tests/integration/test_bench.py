"""The benchmark runner: a --quick suite end to end, resuming, and the summary table."""

import csv
import json
import math

import pytest
import torch
import yaml

from e2abl_lightning.bench.runner import CONFIG_ROOT, load_suite, main, plot_rate_curve, run_cell, run_suite, summarise


@pytest.mark.slow
def test_quick_cpu_suite_runs_and_resumes(tmp_path, capsys):
    out = tmp_path / "bench"
    main(["--suite", "cpu", "--out", str(out), "--quick"])
    printed = capsys.readouterr().out
    assert "| osuleaf_static | e2abl |" in printed and "| osuleaf_static | no_defense |" in printed
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["defense"] for r in rows} == {"no_defense", "e2abl"}
    for r in rows:
        assert 0.0 <= float(r["ca"]) <= 1.0 and 0.0 <= float(r["asr"]) <= 1.0
    assert (out / "ca_vs_asr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    done = sorted((out / "cells").glob("*/result.json"))
    stamps = [p.stat().st_mtime_ns for p in done]
    main(["--suite", "cpu", "--out", str(out), "--quick"])  # finished cells are reused, not rerun
    assert [p.stat().st_mtime_ns for p in done] == stamps


def test_suite_expansion_and_quick_mode():
    cells = load_suite("ucr")
    assert len(cells) == len({c.name for c in cells})
    assert {c.defense for c in cells} == {"no_defense", "clean_oracle", "abl", "e2abl"}
    quick = load_suite("demo", quick=True)
    assert [c.defense for c in quick] == ["no_defense", "e2abl"] and all(c.max_epochs == 4 for c in quick)


def test_suite_of_suites_and_suite_wide_args():
    cpu = load_suite("cpu")
    parts = load_suite("ucr") + load_suite("fashionmnist_cpu")
    assert [c.name for c in cpu] == [c.name for c in parts] and len({c.name for c in cpu}) == len(cpu)
    images = [c for c in cpu if c.data.stem.startswith("fashionmnist")]
    assert images and all("--data.init_args.train_size=20000" in c.args for c in images)
    oracle = next(c for c in images if c.defense == "clean_oracle")
    assert oracle.args[-1] == "--data.init_args.clean_oracle=true"  # the defense's own args come last
    assert not any("train_size" in a for c in cpu if c not in images for a in c.args)
    assert len(load_suite("cpu", quick=True)) == 2


def test_a_stored_cell_run_with_other_settings_is_not_reused(tmp_path):
    cell = load_suite("demo", quick=True)[0]
    done = tmp_path / "cells" / cell.name / "result.json"
    done.parent.mkdir(parents=True)
    row = {"setting": cell.setting, "dataset": cell.data.stem, "poison_rate": 0.1, "defense": cell.defense}
    row |= {"seed": 0, "epochs": 4, "ca": 0.9, "asr": 0.1, "ra": 0.8, "iso_precision": 1.0, "iso_recall": 1.0}
    row |= {"fit_seconds": 1.0}
    done.write_text(json.dumps({**row, "cell": cell.signature}))
    assert run_suite([cell], tmp_path)[0]["ca"] == 0.9  # same settings: reused, nothing rerun
    done.write_text(json.dumps({**row, "cell": {**cell.signature, "epochs": 99}}))
    with pytest.raises(ValueError, match="other settings.*another --out"):
        run_suite([cell], tmp_path)
    edited = tmp_path / cell.data.name  # a copy of the data config, then edited: not the same cell any more
    edited.write_text(cell.data.read_text())
    cell.data = edited
    done.write_text(json.dumps({**row, "cell": cell.signature}))  # the cell's name is unchanged
    assert run_suite([cell], tmp_path)[0]["ca"] == 0.9
    edited.write_text(cell.data.read_text().replace("poison_rate: 0.1", "poison_rate: 0.2"))
    with pytest.raises(ValueError, match="other settings"):
        run_suite([cell], tmp_path)


def test_unknown_suite_names_the_known_ones():
    with pytest.raises(FileNotFoundError, match="known suites"):
        load_suite("no-such-suite")


def test_defenses_and_datasets_flags_run_only_the_named_cells(tmp_path, monkeypatch, capsys):
    import e2abl_lightning.bench.runner as runner

    ran = []
    monkeypatch.setattr(runner, "run_suite", lambda cells, out: ran.extend(cells) or [])
    monkeypatch.setattr(runner, "summarise", lambda rows: "")
    main(["--suite", "fashionmnist", "--out", str(tmp_path), "--defenses", "e2abl"])
    assert len(ran) == 9 and {c.defense for c in ran} == {"e2abl"}
    ran.clear()
    main(["--suite", "fashionmnist", "--out", str(tmp_path), "--datasets", "fashionmnist_sig", "--defenses", "e2abl"])
    assert [(c.data.stem, c.defense) for c in ran] == [("fashionmnist_sig", "e2abl")]
    with pytest.raises(SystemExit):
        main(["--suite", "fashionmnist", "--out", str(tmp_path), "--defenses", "e2abI"])
    assert (
        "--defenses ['e2abI'] not in suite 'fashionmnist'; its defenses: ['clean_oracle', 'e2abl', 'no_defense']"
        in (capsys.readouterr().err)
    )


def test_summary_table_der_and_time_ratio():
    base = {"setting": "s", "seed": 0, "ra": 0.0, "iso_precision": math.nan, "iso_recall": math.nan}
    rows = [
        {**base, "defense": "no_defense", "ca": 0.9, "asr": 1.0, "fit_seconds": 10.0},
        {
            **base,
            "defense": "e2abl",
            "ca": 0.8,
            "asr": 0.0,
            "fit_seconds": 12.0,
            "iso_precision": 0.5,
            "iso_recall": 1.0,
        },
    ]
    table = summarise(rows)
    line = next(x for x in table.splitlines() if "| e2abl |" in x)
    assert "| 0.950 |" in line  # DER = (1.0 - 0.1 + 1) / 2
    assert "| 1.20 |" in line  # 12 s / 10 s
    assert "| 80.0 | 0.0 |" in line


def test_poison_rate_sweep_expands_and_plots(tmp_path):
    cells = load_suite("poison_rate")
    rates = sorted({c.poison_rate for c in cells})
    assert rates == [0.01, 0.05, 0.1, 0.2]
    assert len(cells) == len({c.name for c in cells}), "the rate is part of every cell's name"
    assert {c.setting for c in cells if c.poison_rate == 0.05} == {"osuleaf_static@5%", "japanesevowels_static@5%"}
    rows = [
        {"dataset": "d", "defense": defense, "poison_rate": rate, "seed": seed, "ca": 0.8, "asr": asr}
        for defense, asr in (("no_defense", 0.9), ("e2abl", 0.0))
        for rate in (0.01, 0.1)
        for seed in (0, 1)
    ]
    plot_rate_curve(rows, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_poison_rate_out_of_range_is_refused(tmp_path):
    suite = tmp_path / "bad.yaml"
    suite.write_text(
        "trainer: trainer/bench.yaml\npoison_rates: [0.1, 1.5]\ndatasets: [data/osuleaf_static.yaml]\n"
        "defenses: {no_defense: {model: model/fcn_no_defense.yaml}}\n"
    )
    with pytest.raises(ValueError, match=r"poison_rates entry 1.5 must be in \(0, 1\)"):
        load_suite(str(suite))


def test_poisoning_timer_covers_every_fixed_trigger():
    from e2abl_lightning.bench.poisoning import FIXED_TRIGGERS, time_triggers

    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    times = time_triggers(x, torch.zeros(64, dtype=torch.long), repeats=1)
    assert set(times) == set(FIXED_TRIGGERS)
    assert all(t > 0.0 for t in times.values())


IMAGE_ATTACKS = {"badnets", "blend", "wanet", "sig", "bpp", "trojan", "ftrojan", "label_consistent", "input_aware"}


def test_gpu_suite_expands_to_every_dataset_attack_and_defense():
    cells = load_suite("gpu")
    assert len(cells) == 2 * 9 * 4 == len({c.name for c in cells})
    settings = {tuple(c.data.stem.split("_", 1)) for c in cells}
    assert settings == {(dataset, attack) for dataset in ("cifar10", "gtsrb") for attack in IMAGE_ATTACKS}
    assert {c.defense for c in cells} == {"no_defense", "clean_oracle", "abl", "e2abl"}
    assert {c.seed for c in cells} == {0} and {c.max_epochs for c in cells} == {100}
    assert {c.trainer.name for c in cells} == {"gpu.yaml"}
    assert all(c.args[0] == "--data.init_args.num_workers=8" for c in cells)
    assert all(c.args[-1] == "--data.init_args.clean_oracle=true" for c in cells if c.defense == "clean_oracle")


def test_gpu_suite_schedules_fill_the_fit():
    """ABL's three phases and every model's cosine schedule span exactly the suite's max_epochs."""
    from e2abl_lightning.models.baselines.abl import resolve_schedule

    cells = load_suite("gpu")
    for model in {c.model for c in cells}:
        args = yaml.safe_load(model.read_text())["model"]["init_args"]
        scheduler = args["scheduler"]  # its minimum at trainer.max_epochs (tests/integration/test_cli_user_runs.py)
        assert scheduler["class_path"].endswith("CosineAnnealingToEnd") and "T_max" not in (
            scheduler.get("init_args") or {}
        )
        if any(c.model == model and c.defense == "abl" for c in cells):
            phases = {k: args.get(k) for k in ("isolation_epochs", "finetune_epochs", "unlearning_epochs")}
            assert sum(resolve_schedule(args["schedule"], **phases)) == 100, model.name


@pytest.mark.parametrize("suite", ["abl_anchor", "abl_anchor_digits"])
def test_abl_anchor_suite_runs_abl_on_its_own_network(suite):
    """ABL's schedule spans the suite's epochs, on WRN-16-1, beside the same network undefended and under E2ABL."""
    from e2abl_lightning.models.baselines.abl import resolve_schedule

    cells = load_suite(suite)
    assert len(cells) == 3 * 3 and {c.defense for c in cells} == {"no_defense", "abl", "e2abl"}
    for model in {c.model for c in cells}:
        args = yaml.safe_load(model.read_text())["model"]["init_args"]
        assert args["backbone"]["class_path"].endswith("WRN16_1")
        if "schedule" in args:
            phases = {k: args.get(k) for k in ("isolation_epochs", "finetune_epochs", "unlearning_epochs")}
            assert sum(resolve_schedule(args["schedule"], **phases)) == cells[0].max_epochs == 9


class _Built(Exception):
    """Raised once a cell's CLI is built, before anything trains."""


def test_gpu_suite_cells_build_through_the_cli(tmp_path, monkeypatch, generated_torchvision):
    """One cell per data config (18), defenses in turn so every model config is built too, go through
    ``run_cell``'s own arguments and ``make_cli(run=False)``: configs parse, classes instantiate (the
    datamodule reads its class count from generated CIFAR-10/GTSRB tensors), nothing trains."""
    import e2abl_lightning.cli as cli_module
    from e2abl_lightning.models.baselines import ABL

    cells = load_suite("gpu")
    defenses = ["no_defense", "clean_oracle", "abl", "e2abl"]
    data_configs = sorted({c.data for c in cells})
    chosen = [
        next(c for c in cells if c.data == data and c.defense == defenses[i % len(defenses)])
        for i, data in enumerate(data_configs)
    ]
    assert {c.model for c in chosen} == {c.model for c in cells} and {c.defense for c in chosen} == set(defenses)
    generated = generated_torchvision(fallback=False)
    real_make_cli, built = cli_module.make_cli, []

    def build_only(args, run=True):
        assert run is False
        if not torch.cuda.is_available():  # trainer/gpu.yaml asks for a GPU; the configs are what is tested
            args = [*args, "--trainer.accelerator=cpu"]
        built.append(real_make_cli(args, run=False))
        raise _Built

    monkeypatch.setattr(cli_module, "make_cli", build_only)
    monkeypatch.chdir(tmp_path)
    for cell in chosen:
        with pytest.raises(_Built):
            run_cell(cell, tmp_path / "out")
        cli = built[-1]
        spec = {f: yaml.safe_load(getattr(cell, f).read_text()) for f in ("data", "model")}
        assert type(cli.model).__name__ == spec["model"]["model"]["class_path"].rsplit(".", 1)[-1], cell.name
        assert type(cli.datamodule).__name__ == spec["data"]["data"]["class_path"].rsplit(".", 1)[-1], cell.name
        assert any(type(m).__name__ == "PreActResNet18" for m in cli.model.modules()), cell.name
        assert cli.model.num_classes == (43 if cell.data.stem.startswith("gtsrb") else 10), cell.name
        assert cli.model.input_shape == (3, 32, 32)
        assert cli.datamodule.target_label == spec["data"]["data"]["init_args"]["target_label"]
        assert cli.datamodule.num_workers == 8
        assert cli.datamodule.clean_oracle == (cell.defense == "clean_oracle")
        assert cli.trainer.max_epochs == cell.max_epochs == 100
        assert cli.config.trainer.precision == "bf16-mixed" and not cli.trainer.checkpoint_callbacks
        if isinstance(cli.model, ABL):
            assert cli.model.total_epochs == cell.max_epochs, "ABL's schedule must fill the fit"
    assert len(built) == len(chosen) == 18
    assert sorted(set(generated)) == ["CIFAR10", "GTSRB"]


def test_precision_override_reaches_every_cell_and_the_trainer():
    """``--precision 32-true`` (CPUs without native bf16) comes after the suites' own bf16-mixed."""
    from e2abl_lightning.cli import make_cli

    plain, fp32 = load_suite("cpu"), load_suite("cpu", precision="32-true")
    assert any("--trainer.precision=bf16-mixed" in c.args for c in plain)
    assert all(c.args == [*p.args, "--trainer.precision=32-true"] for p, c in zip(plain, fp32, strict=True))
    assert fp32[0].signature != plain[0].signature  # a stored bf16 cell is not reused for a 32-true run
    cell = load_suite("demo", quick=True, precision="bf16-mixed")[0]
    args = ["--config", str(cell.trainer), "--config", str(cell.data), "--config", str(cell.model), *cell.args]
    assert make_cli(args, run=False).config.trainer.precision == "bf16-mixed"
    with pytest.raises(ValueError, match="precision='fp8' is not allowed"):
        load_suite("demo", precision="fp8")
    with pytest.raises(SystemExit):
        main(["--suite", "demo", "--out", "x", "--precision", "fp8"])


def test_every_suite_expands_to_cells_whose_configs_exist():
    for path in sorted((CONFIG_ROOT / "suite").glob("*.yaml")):
        cells = load_suite(path.stem)
        assert cells, f"{path.name} expands to no cells"
        assert all(c.data.is_file() and c.model.is_file() and c.trainer.is_file() for c in cells), path.name
        assert len({c.name for c in cells}) == len(cells), f"{path.name}: two cells share a name"


def test_validation_grid_shares_no_cell_with_the_development_grid():
    """The protocol: settings are chosen on ``dev``; ``validation`` holds other data configs only, with a
    clean-data twin of every E2ABL cell (do no harm) and the poison rates 5%, 10% and 20%."""
    dev, validation = load_suite("dev"), load_suite("validation")
    assert not {c.data for c in dev} & {c.data for c in validation}
    assert {c.seed for c in validation} == {0, 1, 2}
    for data in {c.data for c in validation}:
        defenses = {c.defense for c in validation if c.data == data}
        assert {"no_defense", "clean_oracle", "e2abl", "e2abl_no_attack"} <= defenses, data.name
    rates = {yaml.safe_load(c.data.read_text())["data"]["init_args"]["poison_rate"] for c in validation}
    assert {0.05, 0.1, 0.2} <= rates
