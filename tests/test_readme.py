"""The README's two set-up commands are the ones CI and users run."""

from __future__ import annotations

import re

from tests.conftest import REPO


def quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_exactly_two_setup_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    main_job, tests = commands
    assert "pip install -e '.[convert]'" in main_job and "facestream run" in main_job and "--video-out" in main_job
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert quick_start_commands()[1] in ci


def test_readme_samples_exist() -> None:
    main_job = quick_start_commands()[0]
    folder = re.search(r"S=(\S+)", main_job).group(1)  # type: ignore[union-attr]
    samples = re.findall(r"\$S/(\S+)", main_job)
    assert len(samples) == 3
    for sample in samples:
        assert (REPO / folder / sample).resolve().is_file()


def test_the_settings_reference_is_the_generated_one() -> None:
    from stream_worker.config import README_END, README_START, settings_reference

    text = (REPO / "README.md").read_text()
    section = text.split(README_START, 1)[1].split(README_END, 1)[0]
    assert section.strip() == settings_reference(), "run `python -m stream_worker.config --readme README.md`"
