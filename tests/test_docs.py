"""The documentation agrees with the code: the flag reference is what the code generates; every
command in README.md, BENCHMARKS.md and docs/ names a script, files and flags that exist; every
relative link resolves; the demo run prints the README's next command; README and BENCHMARKS
stay short enough to read."""

import importlib.util
import re

import pytest

from conftest import REPO

PAGES = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").rglob("*.md"))]
ABSL_BUILTINS = {"flagfile", "helpfull", "help", "helpshort"}
# A command: `python` then a script or a module, or an installed `vnet-*` command, up to the
# end of the shell command.
COMMAND = re.compile(r"(?:python (-m [\w.]+|[\w/]+\.py)|(vnet-[a-z]+))([^;`|)\n]*)")
INSTALLED = {"vnet-train": "train.py", "vnet-evaluate": "evaluate.py", "vnet-export": "export.py", "vnet-predict": "predict.py",
             "vnet-check": "-m vnet_tf.commands.check", "vnet-client": "-m vnet_tf.commands.client",
             **{f"vnet-{name.replace('_', '-')}": f"-m vnet_tf.commands.{name}"
                for name in ("plan", "compare_runs", "pool_folds", "error_breakdown", "label_orientation")}}


def _tool():
    spec = importlib.util.spec_from_file_location("flag_reference", REPO / "tools" / "flag_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def command_flags():
    return _tool().command_flags()


def test_the_flag_reference_is_what_the_code_generates(command_flags):
    tool = _tool()
    assert tool.REFERENCE.read_text(encoding="utf-8") == tool.render(command_flags, tool.unflagged()), \
        "docs/reference/flags.md is out of date: run python tools/flag_reference.py"


def _commands(page):
    """Every ``python SCRIPT ...`` / ``python -m MODULE ...`` of a page: in code blocks (with
    ``\\`` continuations joined) and in inline code spans (which may wrap lines)."""
    text = page.read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            found += COMMAND.findall(line.split(" #")[0])
    for span in re.findall(r"(?<!`)`(python [^`]+)`(?!`)", text):
        found += COMMAND.findall(span.replace("\n", " "))
    return [(script or INSTALLED.get(installed, installed), rest) for script, installed, rest in found]


def _known_flags(target, command_flags):
    if target in command_flags:
        return {row["name"].lstrip("-") for row in command_flags[target]} | ABSL_BUILTINS
    source = (REPO / target).read_text(encoding="utf-8")
    names = set(re.findall(r"[\"']--([a-z][a-z0-9_]*)", source))
    names |= set(re.findall(r"DEFINE_\w+\(\s*[\"']([a-z][a-z0-9_]*)", source))
    if target == "bench/bench_fold.py":  # passes every other flag on to train.py
        names |= {row["name"] for row in command_flags["train.py"]} | ABSL_BUILTINS
    return names


def test_every_documented_command_uses_existing_scripts_files_and_flags(command_flags):
    problems, seen = [], 0
    for page in PAGES:
        for script, rest in _commands(page):
            seen += 1
            target = script
            if target == "-m pytest":
                continue
            if not target.startswith("-m "):
                if not (REPO / target).is_file():
                    problems.append(f"{page.name}: python {script}: no such script")
                    continue
            elif target not in command_flags:
                problems.append(f"{page.name}: python {script}: not a documented module command")
                continue
            known = _known_flags(target, command_flags)
            for name in re.findall(r"(?:^|\s|\[)--([a-z][a-z0-9_]*)", rest):
                if name not in known:
                    problems.append(f"{page.name}: python {script}: unknown flag --{name}")
            for path in re.findall(r"(configs/[\w.]+)", rest):
                if not (REPO / path).is_file():
                    problems.append(f"{page.name}: python {script}: no such file {path}")
    assert seen > 40, seen  # the pages were read and their commands found
    assert sorted(_pyproject_scripts()) == sorted(INSTALLED)
    assert not problems, "\n".join(problems)


def _pyproject_scripts():
    import tomllib
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not re.match(r"[a-z]+://", target) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, "\n".join(broken)


def test_the_demo_prints_the_next_command_the_readme_shows(monkeypatch):
    """train.py's closing line for the README's demo command is the command the README shows next."""
    import pathlib

    from absl import flags
    from commands_in_process import flags_of
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
    with flags_of("train") as train:
        flags.FLAGS.unparse_flags()
        try:
            flags.FLAGS(["train.py", "--flagfile=configs/demo.flags"])
            printed = train.next_command(pathlib.Path(flags.FLAGS.workdir), str(train.demo_data_dir()))
        finally:
            flags.FLAGS.unparse_flags()
    command = printed.split(": ", 1)[1]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"```bash\n{command}\n```" in readme, command


@pytest.mark.parametrize("name, most", [("README.md", 200), ("BENCHMARKS.md", 400)])
def test_the_front_pages_stay_short(name, most):
    lines = len((REPO / name).read_text(encoding="utf-8").splitlines())
    assert lines <= most, f"{name} has {lines} lines; move detail to docs/"


def test_every_file_the_pages_name_exists():
    missing = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for path in set(re.findall(r"\b((?:configs|bench|tests|tools|vnet_tf)/[\w/]+\.(?:py|flags|config))\b", text)):
            if not (REPO / path).is_file():
                missing.append(f"{page.relative_to(REPO)}: {path}")
    assert not missing, "\n".join(missing)
