"""Every training setting is defined once, in its config field (:mod:`vnet_tf.core.settings`):
train.py's flags are generated from the fields without importing TensorFlow, train.py with no
flags builds exactly the dataclasses' defaults, each flag sets the one setting ``FIELD_OF``
names and nothing else, every field has a flag or a stated reason for having none, and a run's
config holds one patch size."""

import dataclasses

import pytest
from absl import flags

from conftest import REPO
from vnet_tf.model.registry import NETWORKS

# A valid value other than the default, where the generic rule below would not give one.
OTHER = {
    "data_dir": None, "workdir": "runs/other", "cache_dir": ".other_cache", "num_classes": "3",
    "target_spacing": "1.5,1,1", "clip_percentiles": "0.5,99.5", "patch_size": "16,32,32",
    "kernel_size": "5", "convs_left": "1,2,2,2", "convs_right": "1,1,1", "aug_elastic_mesh": "3,3,3",
    "aug_elastic_axes": "1,1,0", "aug_rotation": "30,30,30", "aug_scale": "0.7,1.4", "aug_flip_axes": "0,2",
    "aug_lowres_zoom": "0.6,0.9", "mirror_axes": "0,1", "fold": "1", "deep_supervision": "1",
    "max_validation_cases": "3", "time_budget_minutes": "30", "weight_average": "0.99",
    "ct_statistics": "-100,300,50,80", "architecture": "vnet_again",
}
# A second name for the V-Net builder: a registered name is an --architecture choice at once.
if "vnet_again" not in NETWORKS.names:
    NETWORKS.register("vnet_again", "vnet_tf.model.vnet:vnet_network")
# Flags that are only valid with another flag set too: that flag and its value.
COMPANION = {"ct_statistics": ("intensity_normalization", "ct")}


@pytest.fixture()
def command(monkeypatch):
    from commands_in_process import flags_of
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
    with flags_of("train") as train:  # the other commands' flags parked
        flags.FLAGS.unparse_flags()
        yield train
        flags.FLAGS.unparse_flags()


def _leaves(config, prefix=""):
    """The settings as config.json holds them, by dotted path."""
    out = {}
    for name, value in (config.to_dict() if prefix == "" else config).items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def _other_value(name, flag):
    if name in OTHER:
        return OTHER[name]
    if flag.flag_type() == "bool":
        return str(not flag.default).lower()
    if flag.flag_type() == "string enum":
        return next(v for v in flag.parser.enum_values if v != flag.default)
    if flag.flag_type() == "int":
        return str(flag.default + 1)
    if flag.flag_type() == "float":
        return str(0.5 if flag.default in (0.0, 1.0) else flag.default * 0.5)
    raise AssertionError(f"--{name}: give a value in OTHER")


def test_no_flags_build_the_dataclass_defaults(command):
    from vnet_tf.training.config import TrainConfig
    flags.FLAGS(["train.py"])
    built = command.build_config("data")
    assert built == TrainConfig(data_dir="data", workdir=flags.FLAGS.workdir)


def test_each_flag_sets_its_field_and_nothing_else(command):
    flags.FLAGS(["train.py"])
    defaults = _leaves(command.build_config("data"))
    for name, field in command.FIELD_OF.items():
        value = _other_value(name, flags.FLAGS[name])
        if value is None:  # data_dir is build_config's argument (the demo dataset where empty)
            continue
        flags.FLAGS.unparse_flags()
        companion = [f"--{COMPANION[name][0]}={COMPANION[name][1]}"] if name in COMPANION else []
        flags.FLAGS(["train.py", f"--{name}={value}", *companion])
        changed = {k for k, v in _leaves(command.build_config("data")).items() if v != defaults[k]}
        expected = {field} | ({command.FIELD_OF[COMPANION[name][0]]} if name in COMPANION else set())
        assert changed == expected, (name, value, changed)


def test_every_field_has_a_flag_or_a_reason(command):
    from vnet_tf.core.settings import flag, settings
    from vnet_tf.training.config import TrainConfig
    fields = set(_leaves(TrainConfig(data_dir="", workdir="")))
    mapped, excused = set(command.FIELD_OF.values()), set(command.NOT_FLAGS)
    assert not mapped & excused
    # Each setting once: the inference settings' patch size is the run's (no second copy).
    assert fields == (mapped | excused) - {"inference.patch_size_zyx"}, sorted(fields ^ (mapped | excused))
    own = {flag.name for module in command.FLAG_MODULES for flag in flags.FLAGS.get_flags_for_module(module)}
    assert not flags.FLAGS.get_flags_for_module(command.__name__)  # all listed by stage, none loose
    assert own == set(command.FIELD_OF) | set(command.COMMAND_ONLY)

    @dataclasses.dataclass(frozen=True)
    class Unexplained:
        with_flag: int = flag(1, name="with_flag", help="h")
        without: int = 2

    with pytest.raises(TypeError, match="Unexplained.without: give it a flag or say why it has none"):
        settings(Unexplained)


def test_one_patch_size_in_the_run_config():
    from vnet_tf.training.config import TrainConfig
    config = TrainConfig(data_dir="d", workdir="w", patch_size_zyx=(16, 24, 32))
    assert config.inference.patch_size_zyx == (16, 24, 32)
    recorded = config.to_dict()
    assert recorded["patch_size_zyx"] == (16, 24, 32) and "patch_size_zyx" not in recorded["inference"]


def test_the_flags_are_defined_without_tensorflow():
    import subprocess
    import sys
    code = ("import sys, vnet_tf.commands.train as t; assert t.FIELD_OF['patch_size'] == 'patch_size_zyx'; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "[]"


def test_parse_mirror_axes():
    from vnet_tf.commands.cli import parse_mirror_axes
    assert parse_mirror_axes(["0", "2"]) == (0, 2) and parse_mirror_axes(["none"]) == () and parse_mirror_axes([]) == ()
    for bad in (["3"], ["x"]):
        with pytest.raises(ValueError, match="mirror_axes"):
            parse_mirror_axes(bad)


def test_a_setting_the_inference_graph_cannot_reproduce_is_refused_naming_it():
    from vnet_tf.core.errors import UserError
    from vnet_tf.data.preprocess import PreprocessConfig
    from vnet_tf.training.config import TrainConfig
    config = TrainConfig(data_dir="d", workdir="w", preprocess=PreprocessConfig(image_interpolation="bspline"))
    with pytest.raises(UserError, match=r"preprocess.image_interpolation 'bspline': the inference graph"):
        config.validate()
    # The training labels' interpolation is not reproduced at inference (the graph maps probabilities back).
    TrainConfig(data_dir="d", workdir="w", preprocess=PreprocessConfig(label_interpolation="linear_argmax")).validate()


@pytest.mark.parametrize("flagfile", sorted(p.name for p in (REPO / "configs").glob("*.flags")))
def test_every_shipped_flagfile_gives_a_valid_run_and_its_network(flagfile, monkeypatch):
    """Each flagfile in configs/ parses into a TrainConfig that passes every check, and its
    network builds with an output per class (training from demo.flags and hippocampus.flags runs
    in test_train; the paper-sized networks are only built here)."""
    import keras
    from conftest import flagfile_config
    from vnet_tf.model.networks import build_network
    config = flagfile_config(flagfile, monkeypatch)
    model = dataclasses.replace(config.model, num_classes=3)
    network = build_network(model)
    assert network.model.output_shape[-1] == 3
    assert config.inference.patch_size_zyx == config.patch_size_zyx
    keras.backend.clear_session()


def test_library_messages_name_the_flags(command):
    from vnet_tf.commands.setting_flags import flag_words
    message = ("patch_size_zyx (30, 32, 32) must be multiples of 4 (2**(depth-1)); dtype_policy must name a "
               "policy; lowres_zoom must lie in (0, 1]; preprocess.target_spacing_zyx; normalization")
    assert flag_words(message, command.SETTINGS) == (
        "--patch_size (30, 32, 32) must be multiples of 4 (2**(depth-1)); dtype_policy must name a policy; "
        "--aug_lowres_zoom must lie in (0, 1]; --target_spacing; normalization")  # two settings are 'normalization'
