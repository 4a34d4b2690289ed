"""The house rules, read from the source (README "Architecture" says the same in prose):

- packages form layers; a module imports only from its own package or from a lower layer, and
  packages in one layer do not import each other (the workflows bake and launch share services
  below them instead of calling each other);
- no import circle anywhere in bakery/, lazy imports inside functions included;
- only bakery/cloud/ talks to AWS: no other module touches a botocore client, a session or the
  facade's raw `call`;
- every `bakery:*` tag key is spelled once, in bakery/cloud/tags.py.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGE = ROOT / "bakery"

# Lowest first. Each entry is one layer: the packages (or top-level modules) in it.
LAYERS = [
    {"bakery", "bakery.errors"},                                    # foundation: one error family
    {"bakery.signals"},                    # Ctrl-C and SIGTERM, and cancelling a parallel rebake's workers
    {"bakery.progress"},                   # progress: lines, heartbeats, live display, JSON events, timeline
    {"bakery.waits"},                      # polling (a cancelled worker's waits end), told to the progress
    {"bakery.config"},                     # settings, YAML, recipe and environment models
    {"bakery.render"},                     # templates, user data, bootstrap scripts: offline
    {"bakery.remote", "bakery.local"},     # reaching machines (given a dial); the local cloud's machines
    {"bakery.cloud"},                      # every AWS call; tags; which cloud (connect)
    {"bakery.housekeeping"},               # ledger, clean-up stack, janitor, prune
    {"bakery.evidence"},                   # SBOM, vulnerabilities, freshness, signed provenance
    {"bakery.network"},                    # an environment's network, ENI moves, failover
    {"bakery.bake", "bakery.launch",       # the two workflows
     "bakery.scaffold"},                   # `bakery init`: a new repository of recipes and environments
    {"bakery.cli"},                        # what tasks print
    {"bakery.tasks"},                      # the front door: invoke's tasks, the `bakery` command
]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def unit_of(module: str) -> str:
    """The layer unit a module belongs to: bakery.cloud.ec2 -> bakery.cloud; bakery.errors -> itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else module


def layer_of(module: str) -> int:
    unit = unit_of(module)
    for rank, layer in enumerate(LAYERS):
        if unit in layer:
            return rank
    raise AssertionError(f"{module}: its package {unit} is in no layer of tests/test_architecture.py LAYERS")


def _type_checking_only(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                lines.add(getattr(child, "lineno", -1))
    return lines


def imports_of(module: str) -> set[str]:
    """bakery modules this module imports, at module level or inside functions."""
    tree = ast.parse(MODULES[module].read_text())
    skip = _type_checking_only(tree)
    found: set[str] = set()
    is_package = MODULES[module].name == "__init__.py"
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found.update(n for n in names if n == "bakery" or n.startswith("bakery."))
    found = {n if n in MODULES else n.rsplit(".", 1)[0] for n in found}
    return {n for n in found if n in MODULES} - {module}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_package_is_in_a_layer():
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_own_package_or_lower_layers(module):
    wrong = [f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
             for target in sorted(GRAPH[module])
             if unit_of(target) != unit_of(module) and layer_of(target) >= layer_of(module)
             and unit_of(target) != "bakery"]  # the package docstring module is everyone's
    assert not wrong, "\n".join(wrong)


def test_there_is_no_import_circle():
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = "open"
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == "open":
                cycle = stack[stack.index(n):] + [n]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_the_layer_checks_see_a_violation():
    """The checks themselves work: a workflow importing another, or a service importing a workflow, is caught."""
    assert "bakery.bake.steps" in GRAPH["bakery.bake.pipeline"]
    assert layer_of("bakery.launch.run") == layer_of("bakery.bake.run") > layer_of("bakery.network")
    assert layer_of("bakery.cloud.ec2") < layer_of("bakery.housekeeping.stack") < layer_of("bakery.bake.run")


AWS_ATTRIBUTES = {"client", "ssm", "elbv2", "session", "create_client"}


def aws_access(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"line {node.lineno}: imports {n}" for n in names if n.split(".")[0] in ("boto3", "botocore")]
        elif isinstance(node, ast.Attribute) and node.attr in AWS_ATTRIBUTES and ast.unparse(node.value) != "http":
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Attribute) and node.attr == "call" and ast.unparse(node.value).endswith("ec2"):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("module", sorted(m for m in MODULES if unit_of(m) != "bakery.cloud"))
def test_only_the_cloud_package_calls_aws(module):
    found = aws_access(MODULES[module])
    assert not found, f"{MODULES[module].relative_to(ROOT)}: AWS access outside bakery/cloud/: {found}"


def test_the_aws_check_sees_a_raw_client_call(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import botocore.session\nx = ec2.client.describe_instances()\ny = self.ec2.call('a', f)\n")
    assert len(aws_access(sample)) == 3


TAG_KEY = re.compile(r"bakery:[a-z]")


def tag_literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [f"line {n.lineno}: {n.value!r}" for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
            and TAG_KEY.search(n.value)]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "bakery.cloud.tags"))
def test_tag_keys_are_spelled_only_in_the_vocabulary(module):
    found = tag_literals(MODULES[module])
    assert not found, f"{MODULES[module].relative_to(ROOT)}: use bakery.cloud.tags instead of {found}"
