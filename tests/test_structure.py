"""The library's shape, read from its source with ``ast`` (no TensorFlow): imports follow the
pipeline, and no function is too long to read."""

import ast
import pathlib

from conftest import REPO

# Every module of vnet_tf by pipeline stage. A module imports only from its own stage or an
# earlier one; training, evaluation and serving are the three ends, and none imports another;
# the command-line programs (vnet_tf/commands/, where the flags live) come last.
STAGES = {
    "base": ("errors", "io", "integrity", "npz", "folders", "labels", "runtime", "synthetic", "demo_data",
             "flops", "cli"),
    "data": ("cases", "check", "preprocess", "cache"),
    "augment": ("warp", "augment_base", "augment_spatial", "augment_intensity", "augment", "pipeline"),
    "model": ("model", "losses", "deep_supervision", "optim", "averaging", "checkpoint"),
    "inference": ("volume_ops", "segmentation", "inference", "ensemble", "workdir", "serving", "loading",
                  "prediction"),
    "training": ("budget", "training_logs", "training"),
    "evaluation": ("metrics", "figures", "comparison", "evaluation"),
    "serving": ("exporter", "client"),
    "commands": ("commands", "commands.train", "commands.evaluate", "commands.export", "commands.compare_runs",
                 "commands.pool_folds", "commands.error_breakdown", "commands.label_orientation",
                 "commands.predict"),
}
RANK = {"base": 0, "data": 1, "augment": 2, "model": 3, "inference": 4, "training": 5, "evaluation": 5, "serving": 5,
        "commands": 6}
MAX_FUNCTION_LINES = 60
PACKAGE = REPO / "vnet_tf"


def _modules():
    found = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    for path in (PACKAGE / "commands").glob("*.py"):
        found["commands" if path.stem == "__init__" else f"commands.{path.stem}"] = path
    return found


def _imports(path: pathlib.Path) -> set:
    """The vnet_tf modules ``path`` imports (at any depth of the file, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vnet_tf":
            parts = node.module.split(".")
            found |= {alias.name for alias in node.names} if len(parts) == 1 else {parts[1]}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("vnet_tf.")}
    return found


def test_every_module_has_a_stage():
    staged = [m for modules in STAGES.values() for m in modules]
    assert len(staged) == len(set(staged))
    assert sorted(staged) == sorted(_modules()), "add the module to STAGES, at its place in the pipeline"


def _wrong_imports(modules: dict) -> list:
    stage_of = {m: stage for stage, names in STAGES.items() for m in names}
    wrong = []
    for name, path in modules.items():
        for imported in _imports(path) - {name}:
            own, other = stage_of[name], stage_of.get(imported)
            if other is None:
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
    (tmp_path / "exporter.py").write_text("from vnet_tf.training import train\nimport vnet_tf.inference\n",
                                          encoding="utf-8")
    (tmp_path / "cases.py").write_text("from vnet_tf import model\n", encoding="utf-8")
    wrong = _wrong_imports({"exporter": tmp_path / "exporter.py", "cases": tmp_path / "cases.py"})
    assert wrong == ["exporter (serving) imports training (training)", "cases (data) imports model (model)"]


def test_no_library_function_is_longer_than_a_screen():
    long = []
    for name, path in sorted(_modules().items()):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "\n".join(long)
