"""The library's shape, read from its source with ``ast`` (no TensorFlow): imports follow the
pipeline, and no function is too long to read."""

import ast
import pathlib

from conftest import REPO

# vnet_tf's subpackages are the pipeline's stages, in order. A module imports only from its
# own stage or an earlier one; training, evaluation and serving are the three ends, and none
# imports another; the command-line programs (vnet_tf/commands/, where the flags live) come last.
RANK = {"core": 0, "data": 1, "augment": 2, "model": 3, "inference": 4, "training": 5, "evaluation": 5, "serving": 5,
        "commands": 6}
MAX_FUNCTION_LINES = 60
PACKAGE = REPO / "vnet_tf"


def _modules():
    """``{"stage.module": path}`` for every module of the subpackages (``stage`` for an ``__init__``)."""
    found = {}
    for path in PACKAGE.glob("*/*.py"):
        stage = path.parent.name
        found[stage if path.stem == "__init__" else f"{stage}.{path.stem}"] = path
    for path in PACKAGE.glob("*/*/__init__.py"):  # a package inside a stage (its modules define flags only)
        found[f"{path.parent.parent.name}.{path.parent.name}"] = path
    return found


def _imports(path: pathlib.Path) -> set:
    """The vnet_tf modules ``path`` imports, as ``stage.module`` (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vnet_tf":
            parts = node.module.split(".")[1:]
            if len(parts) == 2:
                found.add(".".join(parts))
            else:  # from vnet_tf.stage import module, or from vnet_tf import stage
                found |= {".".join([*parts, alias.name]) for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {".".join(a.name.split(".")[1:3]) for a in node.names if a.name.startswith("vnet_tf.")}
    return found


def test_every_module_is_in_a_stage():
    assert not [p.name for p in PACKAGE.glob("*.py") if p.stem != "__init__"], "put the module in its stage's package"
    assert {p.parent.name for p in PACKAGE.glob("*/*.py")} == set(RANK)


def _wrong_imports(modules: dict) -> list:
    wrong = []
    for name, path in modules.items():
        own = name.split(".")[0]
        for imported in sorted(_imports(path) - {name}):
            other = imported.split(".")[0]
            if other not in RANK or (imported not in _modules() and imported not in modules):
                wrong.append(f"{name} imports vnet_tf.{imported}, which is not a module")
            elif other != own and RANK[other] >= RANK[own]:
                wrong.append(f"{name} ({own}) imports {imported} ({other})")
    return wrong


def test_imports_follow_the_pipeline():
    wrong = _wrong_imports(_modules())
    assert not wrong, "\n".join(wrong)


def test_the_rule_catches_a_wrong_import(tmp_path):
    """The check itself: an exporter that imported the training module, or a data module that
    imported the model, would be reported; an exporter importing the inference graph not."""
    (tmp_path / "exporter.py").write_text("from vnet_tf.training.loop import train\n"
                                          "import vnet_tf.inference.segmenter\n", encoding="utf-8")
    (tmp_path / "cases.py").write_text("from vnet_tf.model import vnet\n", encoding="utf-8")
    wrong = _wrong_imports({"serving.exporter": tmp_path / "exporter.py", "data.cases": tmp_path / "cases.py"})
    assert wrong == ["serving.exporter (serving) imports training.loop (training)",
                     "data.cases (data) imports model.vnet (model)"]


def test_no_library_function_is_longer_than_a_screen():
    long = []
    for name, path in sorted(_modules().items()):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "\n".join(long)


def test_command_line_code_lives_in_commands():
    """Flags (absl) are imported by vnet_tf/commands/ alone, and every command uses absl: no
    second command-line framework (argparse) anywhere."""
    found = []
    for name, path in sorted(_modules().items()):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            roots = {n.split(".")[0] for n in names}
            if "argparse" in roots or ("absl" in roots and name.split(".")[0] != "commands"):
                found.append(f"{name} imports {', '.join(sorted(roots & {'absl', 'argparse'}))}")
    assert not found, found
