"""Writes docs/reference/flags.md, the reference of every command-line flag, from the code.

    python tools/flag_reference.py           # rewrite docs/reference/flags.md
    python tools/flag_reference.py --check   # exit 1 if the file is not what the code gives

The flags are read from the commands themselves: the absl flags of each module of
:mod:`vnet_tf.commands` (each imported in its own process, as their flag names overlap;
train.py's by stage, under the titles its ``FLAG_GROUPS`` gives), and the positional arguments
a command's ``POSITIONAL`` names.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "reference" / "flags.md"
# Each command and how its reference heading runs it.
COMMANDS = {"train": "train.py", "evaluate": "evaluate.py", "export": "export.py", "predict": "predict.py",
            **{name: f"-m vnet_tf.commands.{name}" for name in (
                "check", "plan", "client", "compare_runs", "pool_folds", "error_breakdown", "label_orientation")}}
SHARED_MODULES = ("vnet_tf.commands.cli",)


def _absl_dump(command: str) -> list:
    """The flags the command defines (in its own module, or by stage in its ``FLAG_GROUPS``)
    and the shared CLI module's, as dicts (run in its own process)."""
    sys.path.insert(0, str(REPO))
    import importlib
    from absl import flags
    module_name = f"vnet_tf.commands.{command}"
    module = importlib.import_module(module_name)
    field_of = getattr(module, "FIELD_OF", {})
    kept = {row.flag.name: row.flag.kept for row in getattr(module, "SETTINGS", ()) if row.flag is not None}
    rows = [{"name": name, "type": "argument", "default": "", "help": help_text, "choices": [], "section": ""}
            for name, help_text in getattr(module, "POSITIONAL", {}).items()]
    groups = {**getattr(module, "FLAG_GROUPS", {module_name: ""}), **{name: "errors" for name in SHARED_MODULES}}
    for owner, section in groups.items():
        for flag in flags.FLAGS.get_flags_for_module(owner):
            rows.append({"name": flag.name, "type": flag.flag_type(),
                         "default": (flag.default_as_str or "").strip("'"), "help": flag.help,
                         "choices": [],  # absl's help already begins with <a|b|c>
                         "section": section, "field": field_of.get(flag.name, ""),
                         "kept": kept.get(flag.name, "")})
    return rows


def unflagged() -> dict:
    """``{command: {field: why it has no flag}}``: the settings a command leaves to the library."""
    sys.path.insert(0, str(REPO))
    from vnet_tf.commands import train  # no TensorFlow at import
    return {"train.py": train.NOT_FLAGS}


def command_flags() -> dict:
    """``{command: [flag dict, ...]}`` for every command, in definition order."""
    result = {}
    for command, heading in COMMANDS.items():
        done = subprocess.run([sys.executable, __file__, "--dump", command], capture_output=True,
                              text=True, encoding="utf-8", check=True, cwd=REPO)
        result[heading] = json.loads(done.stdout)
    return result


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(commands: dict, without_flags: dict) -> str:
    out = ["# Flag reference", "",
           "Every flag of every command, generated from the code by `python tools/flag_reference.py`",
           "(a test fails when this file is out of date). absl commands also take `--flagfile=FILE`",
           "(later flags override the file's; a `--flagfile=` line inside a flagfile is found from that",
           "file's folder, and a file that includes itself is an error naming the chain) and `--helpfull`.", ""]
    for command, rows in commands.items():
        out += [f"## python {command}", ""]
        not_flags = without_flags.get(command)
        fields = any(row.get("field") for row in rows)
        section = None
        for row in rows:
            if row["section"] != section:
                section = row["section"]
                if section:
                    out += [f"**{section}**", ""]
                out += (["| flag | type | default | sets (TrainConfig) | meaning |", "|---|---|---|---|---|"] if fields
                        else ["| flag | type | default | meaning |", "|---|---|---|---|"])
            meaning = row["help"]
            if row["choices"]:
                meaning += f" (one of: {', '.join(row['choices'])})"
            if row.get("kept"):
                meaning += f". Not in the hippocampus recipe: {row['kept']}"
            default = f"`{row['default']}`" if row["default"] != "" else ""
            name = row["name"] if row["name"].startswith("-") or row["name"].isupper() else f"--{row['name']}"
            field = [f"`{row['field']}`" if row.get("field") else ""] if fields else []
            out.append(" | ".join([f"| `{name}`", row["type"], _cell(default), *field, _cell(meaning)]) + " |")
            if rows.index(row) + 1 < len(rows) and rows[rows.index(row) + 1]["section"] != section:
                out.append("")
        if not_flags:
            out += ["**Settings with no flag** (fields of TrainConfig that a library caller can set):", "",
                    "| field | why no flag |", "|---|---|"]
            out += [f"| `{field}` | {_cell(why)} |" for field, why in sorted(not_flags.items())]
            out.append("")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list) -> int:
    if argv[:1] == ["--dump"]:
        print(json.dumps(_absl_dump(argv[1])))
        return 0
    text = render(command_flags(), unflagged())
    if argv[:1] == ["--check"]:
        if REFERENCE.read_text(encoding="utf-8") != text:
            print(f"{REFERENCE} is out of date: run python tools/flag_reference.py", file=sys.stderr)
            return 1
        return 0
    REFERENCE.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
