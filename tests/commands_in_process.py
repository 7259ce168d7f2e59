"""Runs a command (train, evaluate, export, predict) exactly as its command line runs it
(``vnet_tf.commands.cli.run`` with fresh flags), in the calling process: what the tests use
where a separate process is not the point, for the cost of no TensorFlow start.

:func:`run_case` runs one argument list and returns ``{"code", "stdout", "stderr"}``; an
exception that escapes the command is printed with its traceback into ``stderr``, as Python
would print it. The process-wide settings a run may change (the flags, the working folder,
TensorFlow's op determinism, Keras' global state) are put back afterwards.

absl keeps one registry of flags per process, and the commands define some of the same names
(``--workdir``, ``--data_dir``): while a command runs, the flags of the other commands are
parked, and put back afterwards.
"""

import contextlib
import importlib
import io
import os
import pathlib
import sys
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]


# Modules of vnet_tf/commands/ that are no command: their flags (--debug) belong to every command.
SHARED = ("cli", "choices")
# command -> the (defining module, Flag) pairs of its flags while they are out of the registry.
_PARKED = {}


def _command_of(module_name: str):
    """The command whose flags ``module_name`` lists (``vnet_tf.commands.train.data``:
    train), or None."""
    prefix = "vnet_tf.commands."
    if not module_name.startswith(prefix):
        return None
    head = module_name[len(prefix):].split(".")[0]
    if head in SHARED:
        return None
    return head


def _take_out(flag_values, keep):
    """Removes the flags of every command but ``keep`` from the registry; command -> pairs."""
    taken = {}
    for owner, owned in list(flag_values.flags_by_module_dict().items()):
        command = _command_of(owner)
        if command is None or command == keep:
            continue
        key_flags = list(flag_values.key_flags_by_module_dict().get(owner, []))
        for flag in list(owned):
            taken.setdefault(command, []).append((owner, flag, flag in key_flags))
            for name in {flag.name, flag.short_name} - {None}:
                if flag_values._flags().get(name) is flag:  # pylint: disable=protected-access
                    delattr(flag_values, name)
    return taken


def _put_back(flag_values, pairs):
    for owner, flag, key in pairs:
        for name in {flag.name, flag.short_name} - {None}:
            flag_values[name] = flag
        flag_values.register_flag_by_module(owner, flag)
        flag_values.register_flag_by_module_id(id(sys.modules.get(owner)), flag)  # as absl registers it
        if key:
            flag_values.register_key_flag_for_module(owner, flag)


@contextlib.contextmanager
def flags_of(command: str):
    """Only ``command``'s flags in absl's registry (its module imported) while the block runs;
    afterwards those that were there before, and the command's where they do not clash."""
    from absl import flags
    before = {_command_of(owner) for owner, owned in flags.FLAGS.flags_by_module_dict().items() if owned} - {None}
    _PARKED.update(_take_out(flags.FLAGS, keep=command))
    _put_back(flags.FLAGS, _PARKED.pop(command, []))
    try:
        yield importlib.import_module(f"vnet_tf.commands.{command}")
    finally:
        _PARKED.update(_take_out(flags.FLAGS, keep=None))
        for name in before:
            _put_back(flags.FLAGS, _PARKED.pop(name, []))
        # The command's own flags stay where no other's clash (an imported module defines its flags once).
        own = _PARKED.get(command, [])
        if not {f.name for _, f, _ in own} & set(flags.FLAGS):
            _put_back(flags.FLAGS, _PARKED.pop(command, []))


@contextlib.contextmanager
def _restored_process_state():
    import keras
    from absl import flags
    from tensorflow.python.framework import config as tf_config  # (no public switch back)
    deterministic, cwd = tf_config.is_op_determinism_enabled(), os.getcwd()
    flags.FLAGS.unparse_flags()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(cwd)
        flags.FLAGS.unparse_flags()
        if tf_config.is_op_determinism_enabled() != deterministic:
            (tf_config.enable_op_determinism if deterministic else tf_config.disable_op_determinism)()
        keras.backend.clear_session()


def run_case(command: str, argv) -> dict:
    """``python <command>.py *argv`` from the repository root, run in this process."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import vnet_tf  # noqa: F401  (first: oneDNN)
    from vnet_tf.commands import cli

    out, err = io.StringIO(), io.StringIO()
    with flags_of(command) as module, _restored_process_state(), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            cli.run(module.main, argv=[f"{command}.py", *map(str, argv)])
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:  # pylint: disable=broad-except
            traceback.print_exc()
            code = 1
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
