"""The deployment guide's TF Serving commands (docs/how-to/deploy.md) agree with the files the project ships: the export base
and the docker mounts, the model name in the container, configs/models.config and the client
and curl commands, the model config's version policy, and the signature names."""

import re
import shlex

from conftest import REPO, command_flag_values


def _serving_commands():
    section = (REPO / "docs" / "how-to" / "deploy.md").read_text(encoding="utf-8")
    block = section[section.index("```bash") + len("```bash"):]
    block = block[:block.index("```")].replace("\\\n", " ")
    return [shlex.split(line.split("#")[0]) for line in block.strip().splitlines() if line.strip()]


def _flag(args, name):
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return args[i + 1]
    return None


def test_the_serving_commands_match_the_shipped_files():
    commands = _serving_commands()
    export = next(c for c in commands if c[:2] == ["python", "export.py"])
    base = _flag(export, "--export_base")
    config_text = (REPO / "configs" / "models.config").read_text(encoding="utf-8")
    name = re.search(r'name: "([^"]+)"', config_text).group(1)
    base_path = re.search(r'base_path: "([^"]+)"', config_text).group(1)
    assert "model_version_policy" in config_text
    dockers = [c for c in commands if c[:2] == ["docker", "run"]]
    assert len(dockers) == 2
    for docker in dockers:
        mounts = dict(m.replace("$PWD/", "").split(":", 1) for m in
                      (docker[i + 1] for i, a in enumerate(docker) if a == "-v"))
        assert mounts[base] == base_path, (mounts, base, base_path)  # the export base is what the server reads
        config_file = _flag(docker, "--model_config_file")
        if config_file:
            sources = {target: source for source, target in mounts.items()}
            assert (REPO / sources[config_file]).is_file(), (config_file, mounts)
        else:
            assert f"MODEL_NAME={name}" in docker and base_path == f"/models/{name}"
    show = next(c for c in commands if c[:2] == ["saved_model_cli", "show"])
    assert _flag(show, "--dir").startswith(base + "/")
    clients = [c for c in commands if c[:3] == ["python", "-m", "vnet_tf.commands.client"]]
    assert len(clients) == 3
    for client in clients:
        args, positional = command_flag_values("client", *client[3:])
        assert not positional and args["scan"] and (args["request_json"] or args["model"] == name)
    curl = next(c for c in commands if c[0] == "curl")
    request_json = next(_flag(c, "--request_json") for c in clients if _flag(c, "--request_json"))
    assert f"@{request_json}" in curl and curl[-1].endswith(f"/v1/models/{name}:predict")


def test_the_signature_table_names_every_signature():
    """The serving reference lists each signature export.py writes (test_export checks the written ones)."""
    from vnet_tf.inference.signatures import SIGNATURES
    section = (REPO / "docs" / "reference" / "serving.md").read_text(encoding="utf-8")
    table = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M)
    assert sorted(set(table) & set(SIGNATURES)) == sorted(SIGNATURES)
