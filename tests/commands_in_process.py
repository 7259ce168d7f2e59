"""Runs one command (train, evaluate or export) on several argument lists in one process,
each exactly as its command line runs it (``vnet_tf.core.cli.run`` with fresh flags), and writes
a JSON list of ``{"code", "stdout", "stderr"}``: the fault tests check dozens of cases for
the cost of one TensorFlow start.

    python tests/commands_in_process.py COMMAND CASES.json RESULTS.json

``CASES.json``: a list of argument lists; the results go to ``RESULTS.json``. An exception that escapes the command is printed
with its traceback into that case's ``stderr``, as Python would print it.
"""

import contextlib
import importlib
import io
import json
import pathlib
import sys
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]


def main(command: str, cases_file: str, results_file: str) -> None:
    sys.path.insert(0, str(REPO))
    import vnet_tf  # noqa: F401  (first: oneDNN)
    from absl import flags
    from vnet_tf.core import cli

    module = importlib.import_module(f"vnet_tf.commands.{command}")
    results = []
    for argv in json.loads(pathlib.Path(cases_file).read_text(encoding="utf-8")):
        flags.FLAGS.unparse_flags()
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.run(module.main, argv=[f"{command}.py", *argv])
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except BaseException:  # pylint: disable=broad-except
                traceback.print_exc()
                code = 1
        results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
    pathlib.Path(results_file).write_text(json.dumps(results), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:])
