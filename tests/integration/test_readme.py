"""The README's promises: its "UCR-format folder" commands run as written on a generated folder, and its
results table is the one its command wrote."""

import csv
import shlex
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
#: appended to each ``e2abl`` command so the run takes seconds: two epochs, the first decision after one
SPEED = ["--trainer.max_epochs=2", "--model.init_args.policy.warmup_epochs=1"]


def readme_block(marker: str) -> list[list[str]]:
    """The commands of the fenced block that follows ``marker`` in README.md (continuations joined)."""
    block = README.split(marker, 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    lines = [line.split(" #", 1)[0] for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def console_script(name: str):
    """The function behind an installed console script (``e2abl``, ``e2abl-report``, ...)."""
    (script,) = entry_points(group="console_scripts", name=name)
    return script.load()


def write_ucr_folder(folder: Path, name: str, n_train: int = 48, n_test: int = 24, length: int = 64) -> None:
    """A 3-class UCR-format dataset: ``<folder>/<name>/<name>_{TRAIN,TEST}.tsv``, label first."""
    rng = np.random.default_rng(0)
    (folder / name).mkdir(parents=True)
    t = np.linspace(0.0, 1.0, length)
    for split, n in (("TRAIN", n_train), ("TEST", n_test)):
        y = np.arange(n) % 3
        x = np.sin(2 * np.pi * (y[:, None] + 1) * t) + 0.3 * rng.standard_normal((n, length))
        np.savetxt(folder / name / f"{name}_{split}.tsv", np.column_stack([y + 1, x]), delimiter="\t", fmt="%.5g")


def test_readme_steps_on_your_own_ucr_folder(tmp_path, monkeypatch, one_thread, capsys):
    commands = readme_block("<!-- own-ucr-folder")
    assert [c[:2] for c in commands] == [["e2abl", "fit"], ["e2abl", "test"], ["e2abl-report", commands[2][1]]]
    data_dir = commands[0][commands[0].index("--data.init_args.data_dir") + 1]
    dataset = commands[0][commands[0].index("--data.init_args.dataset") + 1]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    write_ucr_folder(tmp_path / data_dir, dataset)
    for command in commands:
        extra = SPEED if command[0] == "e2abl" else []
        monkeypatch.setattr(sys, "argv", [command[0]])
        console_script(command[0])(command[1:] + extra)
    run = tmp_path / commands[2][1]
    # 16 series a class: the class test cannot see a 20% poisoning, so E2ABL says so, trains undefended
    # and suspects nothing; suspects.csv is still written, with the columns the README names
    assert "E2ABL cannot isolate reliably on this training set" in capsys.readouterr().out
    with open(run / "suspects.csv") as f:
        reader = csv.DictReader(f)
        assert {"index", "source", "score", "given", "recovered", "isolated"} <= set(reader.fieldnames or ())
        assert list(reader) == []
    assert (run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "local:" in (run / "poison_manifest.json").read_text()  # read from the folder, not a bundled copy
    tested = [p for p in (tmp_path / "logs").rglob("metrics.csv") if "test/clean_acc" in p.read_text()]
    assert tested, "e2abl test logged no test/clean_acc"
    capsys.readouterr()


def test_readme_results_table_is_the_one_its_command_wrote():
    results = README.split("## Results", 1)[1].split("\n## ", 1)[0]
    command = results.split("```bash\n", 1)[1].split("\n```", 1)[0]
    page = REPO / shlex.split(command)[shlex.split(command).index("--report") + 1]
    text = page.read_text()
    assert f"```bash\n{command}\n```" in text, f"{page} was written by another command"
    table = [line for line in results.splitlines() if line.startswith("|")]
    assert len(table) >= 3
    assert "\n".join(table) in text, f"the README's table differs from {page}'s"
