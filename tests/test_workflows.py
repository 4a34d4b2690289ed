"""The GitHub workflows, checked offline: schema-valid, and the properties the rebake relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
#: bakery's rebake for any repository (workflow_call): this repository's rebake.yml calls it, and
#: `bakery init` writes the same jobs into a new repository's own rebake.yml
REUSABLE = "bakery-rebake.yml"
#: what `bakery init` writes, as a repository of its own has it (tests use the rebake jobs in both)
SCAFFOLD_SOURCE = "bakery @ git+https://github.com/example/bakery@" + "0" * 40


def scaffold_workflow(tmp: Path) -> Path:
    from bakery.scaffold.init import WORKFLOW, Source, workflow_text

    path = tmp / "scaffold-rebake.yml"
    path.write_text(workflow_text(Source(SCAFFOLD_SOURCE, pinned=True)))
    assert WORKFLOW == ".github/workflows/rebake.yml"
    return path


def load(name: str | Path) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())  # an absolute path stays itself
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def test_every_workflow_and_the_scaffolds_pass_githubs_schema(tmp_path):
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    files = [*sorted(WORKFLOWS.glob("*.yml")), scaffold_workflow(tmp_path)]
    out = subprocess.run([exe, "--builtin-schema", "vendor.github-workflows", *map(str, files)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rebake_runs_weekly_and_on_demand_through_the_reusable_workflow_with_this_checkout():
    wf = load("rebake.yml")
    assert wf["on"]["schedule"][0]["cron"].split()[-1] == "1"  # weekly, on Mondays
    assert set(wf["on"]["workflow_dispatch"]["inputs"]) == {"recipes", "force"}
    (caller,) = wf["jobs"].values()
    assert caller["uses"] == f"./.github/workflows/{REUSABLE}"
    assert caller["permissions"] == {"id-token": "write", "contents": "read"}
    assert caller["with"]["bakery"] == "." and caller["with"]["role-arn"] == "${{ vars.BAKERY_ROLE_ARN }}"
    declared = load(REUSABLE)["on"]["workflow_call"]["inputs"]
    assert set(caller["with"]) <= set(declared)
    assert {name for name, spec in declared.items() if spec["required"]} <= set(caller["with"])


@pytest.mark.parametrize("name", [REUSABLE, "scaffold"])
def test_the_rebake_jobs_use_oidc_never_cancel_a_bake_and_always_clean_up(name, tmp_path):
    wf = load(scaffold_workflow(tmp_path) if name == "scaffold" else name)
    job = wf["jobs"]["rebake"]
    assert job["permissions"]["id-token"] == "write"
    assert job["concurrency"]["group"] == "rebake-${{ matrix.group }}" and job["concurrency"]["cancel-in-progress"] is False
    assert "matrix" in job["strategy"] and job["strategy"]["fail-fast"] is False
    creds = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("aws-actions/configure-aws-credentials"))
    assert creds["with"]["role-to-assume"] == "${{ env.BAKERY_ROLE_ARN }}"
    assert int(creds["with"]["role-duration-seconds"]) >= 7200  # longer than the 1 h default
    cleanup = wf["jobs"]["cleanup"]
    assert cleanup["if"] == "always()" and any("bakery janitor --run-id" in s.get("run", "") for s in cleanup["steps"])
    assert wf["env"]["BAKERY_RUN_ID"] == "${{ github.run_id }}"
    role = wf["env"]["BAKERY_ROLE_ARN"]
    assert role == ("${{ vars.BAKERY_ROLE_ARN }}" if name == "scaffold" else "${{ inputs.role-arn }}")
    installs = [s for j in wf["jobs"].values() for s in j["steps"] if s.get("name") == "install bakery"]
    assert len(installs) == len(wf["jobs"])
    assert all(s["run"].rstrip().endswith('\npython -m pip install "$BAKERY_SOURCE"') or
               s["run"] == 'python -m pip install "$BAKERY_SOURCE"' for s in installs)


@pytest.mark.parametrize("source", ["", "-r requirements.txt", "--index-url=https://evil.example/simple"])
def test_the_first_job_stops_before_pip_without_a_bakery_to_install(source, tmp_path):
    """`bakery init` leaves BAKERY_SOURCE empty when it knows no commit: the run says so at once."""
    import os

    step = next(s for s in load(REUSABLE)["jobs"]["plan"]["steps"] if s.get("name") == "install bakery")
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "python").write_text(f"#!/bin/sh\ntouch {tmp_path}/pip-ran\n")
    (stub / "python").chmod(0o755)
    done = subprocess.run(["bash", "-e", "-c", step["run"]], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "BAKERY_SOURCE": source})
    assert done.returncode == 1 and not (tmp_path / "pip-ran").exists()
    assert done.stdout.startswith("::error title=BAKERY_SOURCE::set BAKERY_SOURCE to bakery pinned to a commit")


def test_the_scaffolds_rebake_has_the_reusable_workflows_jobs_word_for_word(tmp_path):
    """One text for the jobs (bakery/scaffold/workflow_jobs.yml): a fix to the rebake reaches both."""
    reusable = (WORKFLOWS / REUSABLE).read_text()
    scaffold = scaffold_workflow(tmp_path).read_text()
    jobs = (ROOT / "bakery/scaffold/workflow_jobs.yml").read_text()
    assert reusable.endswith("\n" + jobs) and scaffold.endswith("\n" + jobs)
    head = load(scaffold_workflow(tmp_path))
    assert head["env"]["BAKERY_SOURCE"] == SCAFFOLD_SOURCE
    assert set(head["env"]) == set(load(REUSABLE)["env"])  # the jobs find the same variables in both


def test_the_rebake_gates_on_a_fresh_osv_feed_signs_and_keeps_its_evidence_as_artifacts(tmp_path):
    """The feed is downloaded in the job and reaches the bake as the osv_feed setting; the signing
    key and the bucket come from the repository's variables; the manifests, SBOMs, findings and
    provenance are uploaded even when the bake failed (a refused image's findings most of all)."""
    import os

    steps = load(REUSABLE)["jobs"]["rebake"]["steps"]
    names = [s.get("name", s.get("uses", "")) for s in steps]
    feed = steps[names.index("vulnerability feed")]
    bake = next(s for s in steps if str(s.get("name", "")).startswith("rebake "))
    assert bake["env"] == {"RECIPES": "${{ matrix.group }}"}
    keep = steps[names.index("keep the evidence")]
    assert names.index("vulnerability feed") < steps.index(bake) < names.index("keep the evidence")
    assert "osv-vulnerabilities.storage.googleapis.com/Debian/all.zip" in feed["run"]
    github_env = tmp_path / "github_env"  # what the step hands to the next steps, run with curl stubbed
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "curl").write_text('#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; done; : > "$2"\n')
    (stub / "curl").chmod(0o755)
    done = subprocess.run(["bash", "-e", "-c", feed["run"]], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "RUNNER_TEMP": str(tmp_path),
                               "GITHUB_ENV": str(github_env)})
    assert done.returncode == 0, done.stderr
    assert github_env.read_text() == f"INVOKE_BAKERY_OSV_FEED={tmp_path}/osv-debian.zip\n"
    assert (tmp_path / "osv-debian.zip").exists()
    env = load(REUSABLE)["env"]
    assert env["INVOKE_BAKERY_EVIDENCE_BUCKET"] == "${{ inputs.evidence-bucket }}"
    assert env["INVOKE_BAKERY_SIGNING_KEY"] == "${{ inputs.signing-key }}"
    assert keep["if"] == "always()" and keep["uses"].startswith("actions/upload-artifact@")
    assert keep["with"]["path"].split() == [".bakery/manifests/", ".bakery/evidence/"]


def test_ci_runs_the_same_command_as_dot_ci_run():
    wf = load("ci.yml")
    assert {"push", "pull_request"} <= set(wf["on"])
    assert any(".ci/run" in s.get("run", "") for s in wf["jobs"]["test"]["steps"])
    assert "pytest -q" in (ROOT / ".ci" / "run").read_text()


def plan_step(tmp_path, recipes: dict[str, str], chosen: str = "") -> tuple[subprocess.CompletedProcess, str]:
    """The rebake workflow's `plan` step, run as the runner would (bash, from the checkout, with
    bakery installed on PATH), on recipes in a temp dir; its return and what it wrote to GITHUB_OUTPUT."""
    import os

    step = next(s for s in load(REUSABLE)["jobs"]["plan"]["steps"] if s.get("id") == "list")
    recipes_dir = tmp_path / "recipes"
    recipes_dir.mkdir()
    for name, body in recipes.items():
        (recipes_dir / f"{name}.yaml").write_text(body)
    output = tmp_path / "github_output"
    env = {**os.environ, "BAKERY_RECIPES": chosen, "GITHUB_OUTPUT": str(output),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "INVOKE_BAKERY_RECIPES_DIR": str(recipes_dir), "INVOKE_BAKERY_STATE_DIR": str(tmp_path / "state")}
    assert step["env"] == {"RECIPES": "${{ env.BAKERY_RECIPES }}"}  # the input reaches the shell as data
    env["RECIPES"] = env.pop("BAKERY_RECIPES")  # what the runner does with that step's env
    done = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    return done, output.read_text() if output.exists() else ""


TEMPLATE = "abstract: true\nsource: {ami: ami-12345678}\nsteps: [{name: base, shell: 'true'}]\n"


def test_the_matrix_leaves_out_abstract_recipes(tmp_path):
    done, output = plan_step(tmp_path, {"template": TEMPLATE, "web": "extends: template\n",
                                        "db": "source: {ami: ami-12345678}\n"})
    assert done.returncode == 0, done.stderr
    assert output == 'groups=["db","web"]\n'


def test_the_matrix_bakes_a_tree_of_layers_in_one_job_parents_first_and_other_trees_beside_it(tmp_path):
    done, output = plan_step(tmp_path, {"web": "source: {recipe: base}\n", "app": "source: {recipe: base}\n",
                                        "base": "source: {ami: ami-12345678}\n", "tool": "source: {recipe: web}\n",
                                        "db": "source: {ami: ami-12345678}\n"})
    assert done.returncode == 0, done.stderr
    assert output == 'groups=["base app web tool","db"]\n'


@pytest.mark.parametrize("chosen, ok, out", [
    ("web db", True, 'groups=["web","db"]\n'),
    ("template", False, "recipe 'template' is abstract (a template for extends): rebake a recipe that extends it"),
])
def test_the_matrix_takes_the_recipes_dispatched_but_never_an_abstract_one(tmp_path, chosen, ok, out):
    recipes = {"template": TEMPLATE, "web": "extends: template\n", "db": "source: {ami: ami-12345678}\n"}
    done, output = plan_step(tmp_path, recipes, chosen=chosen)
    assert (done.returncode == 0) is ok, done.stderr
    assert out in (output if ok else done.stderr)


# ---- hardening (issue 18 item 1) ---------------------------------------------------------------

#: every workflow of this repository, and the one `bakery init` writes into a new repository
WORKFLOW_FILES = [*sorted(p.name for p in WORKFLOWS.glob("*.yml")), "scaffold"]


def workflow_file(name: str, tmp: Path) -> Path:
    return scaffold_workflow(tmp) if name == "scaffold" else WORKFLOWS / name


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_no_expression_is_ever_part_of_a_script(name, tmp_path):
    """Inputs and contexts reach a `run:` through `env:` only: an expression inside a script is
    pasted into it before the shell starts (script injection)."""
    for job_name, job in load(workflow_file(name, tmp_path))["jobs"].items():
        for step in job.get("steps", []):
            assert "${{" not in step.get("run", ""), f"{name}: job {job_name}: step {step.get('name', step)}"


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_every_action_is_pinned_to_a_full_commit_with_its_version_beside_it(name, tmp_path):
    """...and a job that calls a workflow calls this repository's own (at the caller's commit)."""
    import re

    text = workflow_file(name, tmp_path).read_text()
    lines = [line for line in text.splitlines() if re.match(r"\s*(- )?uses:", line)]
    assert lines
    for line in lines:
        assert (re.fullmatch(r"\s*(- )?uses: [\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+)*", line)
                or re.fullmatch(r"\s*uses: \./\.github/workflows/[\w.-]+\.yml", line)), line


def assumes_the_role(job: dict) -> bool:
    """A job assumes the role with the AWS action, or calls a workflow one of whose jobs does."""
    if "uses" in job:
        called = load(ROOT / job["uses"])
        return any(assumes_the_role(j) for j in called["jobs"].values())
    return any(str(s.get("uses", "")).startswith("aws-actions/configure-aws-credentials@") for s in job["steps"])


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_every_job_has_a_timeout_and_only_jobs_that_assume_the_role_may_ask_for_a_token(name, tmp_path):
    wf = load(workflow_file(name, tmp_path))
    assert wf["permissions"] in ({}, {"contents": "read"})  # nothing more by default
    for job_name, job in wf["jobs"].items():
        granted = job.get("permissions", wf["permissions"])
        assert (granted.get("id-token") == "write") is assumes_the_role(job), job_name
        assert set(granted) <= {"id-token", "contents"} and granted.get("contents", "read") == "read", job_name
        if "uses" in job:  # a call: the called jobs carry the timeouts, and get no more than granted here
            assert "permissions" in job, job_name
            continue
        assert 0 < int(job["timeout-minutes"]) <= 180, job_name
        for step in job["steps"]:
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, job_name


HOSTILE = ["web; curl evil", "$(id)", "`id`", "web && rm -rf /", "../../etc/passwd", "*", "Web",
           "web|tee", "-rf", "a" * 64, "web\u200b"]


@pytest.mark.parametrize("raw", HOSTILE)
def test_the_recipe_input_check_refuses_anything_but_recipe_names(raw):
    import os

    done = subprocess.run([sys.executable, "-m", "bakery.cli.recipe_names"], capture_output=True, text=True,
                          env={**os.environ, "RECIPES": raw}, timeout=30)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("::error title=recipes input::recipes: ") and done.stderr.count("\n") == 1


def test_the_recipe_input_check_passes_recipe_names_one_per_line():
    import os

    done = subprocess.run([sys.executable, "-m", "bakery.cli.recipe_names"], capture_output=True, text=True,
                          env={**os.environ, "RECIPES": "  base web\tdb_2 "}, timeout=30)
    assert done.returncode == 0 and done.stdout == "base\nweb\ndb_2\n"


def test_a_hostile_dispatch_fails_the_plan_step_before_bakery_runs(tmp_path):
    marker = tmp_path / "ran"
    done, output = plan_step(tmp_path, {"web": "source: {ami: ami-12345678}\n"}, chosen=f"web; touch {marker}")
    assert done.returncode != 0 and output == "" and not marker.exists()
    assert "'web;' is not a recipe name" in done.stderr


def test_both_jobs_that_take_recipe_names_check_them_first():
    jobs = load(REUSABLE)["jobs"]
    for job, step in (("plan", next(s for s in jobs["plan"]["steps"] if s.get("id") == "list")),
                      ("rebake", next(s for s in jobs["rebake"]["steps"] if str(s.get("name", "")).startswith("rebake ")))):
        assert "set -f" in step["run"] and "names=$(python -m bakery.cli.recipe_names)" in step["run"], job
