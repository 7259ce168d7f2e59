"""oneDNN is turned on for CPU runs unless the user chose otherwise."""

import subprocess
import sys

from conftest import REPO, subprocess_env

PROBE = (
    "import vnet_tf, tensorflow, os\n"
    "from vnet_tf.runtime import onednn_enabled\n"
    "print('ONEDNN', os.environ['TF_ENABLE_ONEDNN_OPTS'], onednn_enabled())\n"
)


def _probe(env_value):
    env = subprocess_env()
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    if env_value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split("ONEDNN", 1)[1].split()


def test_importing_vnet_tf_turns_onednn_on():
    assert _probe(None) == ["1", "True"]


def test_user_choice_is_kept():
    assert _probe("0") == ["0", "False"]
