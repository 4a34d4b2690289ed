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


def load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def test_both_workflows_pass_githubs_schema():
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    out = subprocess.run([exe, "--builtin-schema", "vendor.github-workflows", str(WORKFLOWS / "rebake.yml"),
                          str(WORKFLOWS / "ci.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rebake_runs_weekly_and_on_demand_with_oidc_and_never_cancels_a_bake():
    wf = load("rebake.yml")
    assert wf["on"]["schedule"][0]["cron"].split()[-1] == "1"  # weekly, on Mondays
    assert set(wf["on"]["workflow_dispatch"]["inputs"]) == {"recipes", "force"}
    job = wf["jobs"]["rebake"]
    assert job["permissions"]["id-token"] == "write"
    assert job["concurrency"]["group"] == "rebake-${{ matrix.group }}" and job["concurrency"]["cancel-in-progress"] is False
    assert "matrix" in job["strategy"] and job["strategy"]["fail-fast"] is False
    creds = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("aws-actions/configure-aws-credentials"))
    assert creds["with"]["role-to-assume"] == "${{ vars.BAKERY_ROLE_ARN }}"
    assert int(creds["with"]["role-duration-seconds"]) >= 7200  # longer than the 1 h default
    cleanup = wf["jobs"]["cleanup"]
    assert cleanup["if"] == "always()" and any("invoke janitor --run-id" in s.get("run", "") for s in cleanup["steps"])
    assert wf["env"]["BAKERY_RUN_ID"] == "${{ github.run_id }}"


def test_the_rebake_gates_on_a_fresh_osv_feed_signs_and_keeps_its_evidence_as_artifacts(tmp_path):
    """The feed is downloaded in the job and reaches the bake as the osv_feed setting; the signing
    key and the bucket come from the repository's variables; the manifests, SBOMs, findings and
    provenance are uploaded even when the bake failed (a refused image's findings most of all)."""
    import os

    steps = load("rebake.yml")["jobs"]["rebake"]["steps"]
    names = [s.get("name", s.get("uses", "")) for s in steps]
    feed = steps[names.index("vulnerability feed")]
    bake = next(s for s in steps if str(s.get("name", "")).startswith("rebake "))
    assert bake["env"].pop("RECIPES") == "${{ matrix.group }}" and bake["env"].pop("FORCE")
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
    assert bake["env"] == {"INVOKE_BAKERY_EVIDENCE_BUCKET": "${{ vars.BAKERY_EVIDENCE_BUCKET }}",
                           "INVOKE_BAKERY_SIGNING_KEY": "${{ vars.BAKERY_SIGNING_KEY }}"}
    assert keep["if"] == "always()" and keep["uses"].startswith("actions/upload-artifact@")
    assert keep["with"]["path"].split() == [".bakery/manifests/", ".bakery/evidence/"]


def test_ci_runs_the_same_command_as_dot_ci_run():
    wf = load("ci.yml")
    assert {"push", "pull_request"} <= set(wf["on"])
    assert any(".ci/run" in s.get("run", "") for s in wf["jobs"]["test"]["steps"])
    assert "pytest -q" in (ROOT / ".ci" / "run").read_text()


def plan_step(tmp_path, recipes: dict[str, str], chosen: str = "") -> tuple[subprocess.CompletedProcess, str]:
    """The rebake workflow's `plan` step, run as the runner would (bash, from the checkout, with
    `invoke` on PATH), on recipes in a temp dir; its return and what it wrote to GITHUB_OUTPUT."""
    import os

    step = next(s for s in load("rebake.yml")["jobs"]["plan"]["steps"] if s.get("id") == "list")
    recipes_dir = tmp_path / "recipes"
    recipes_dir.mkdir()
    for name, body in recipes.items():
        (recipes_dir / f"{name}.yaml").write_text(body)
    output = tmp_path / "github_output"
    env = {**os.environ, "RECIPES": chosen, "GITHUB_OUTPUT": str(output),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "INVOKE_BAKERY_RECIPES_DIR": str(recipes_dir), "INVOKE_BAKERY_STATE_DIR": str(tmp_path / "state")}
    assert step["env"] == {"RECIPES": "${{ inputs.recipes }}"}  # the input reaches the shell as data
    done = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=ROOT, env=env, capture_output=True, text=True,
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

WORKFLOW_FILES = sorted(p.name for p in WORKFLOWS.glob("*.yml"))


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_no_expression_is_ever_part_of_a_script(name):
    """Inputs and contexts reach a `run:` through `env:` only: an expression inside a script is
    pasted into it before the shell starts (script injection)."""
    for job_name, job in load(name)["jobs"].items():
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), f"{name}: job {job_name}: step {step.get('name', step)}"


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_every_action_is_pinned_to_a_full_commit_with_its_version_beside_it(name):
    import re

    lines = [line for line in (WORKFLOWS / name).read_text().splitlines() if re.match(r"\s*(- )?uses:", line)]
    assert lines
    for line in lines:
        assert re.fullmatch(r"\s*(- )?uses: [\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+)*", line), line


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_every_job_has_a_timeout_and_only_jobs_that_assume_the_role_may_ask_for_a_token(name):
    wf = load(name)
    assert wf["permissions"] in ({}, {"contents": "read"})  # nothing more by default
    for job_name, job in wf["jobs"].items():
        assert 0 < int(job["timeout-minutes"]) <= 180, job_name
        assumes = any(str(s.get("uses", "")).startswith("aws-actions/configure-aws-credentials@") for s in job["steps"])
        granted = job.get("permissions", wf["permissions"])
        assert (granted.get("id-token") == "write") is assumes, job_name
        assert set(granted) <= {"id-token", "contents"} and granted.get("contents", "read") == "read", job_name
        for step in job["steps"]:
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, job_name


HOSTILE = ["web; curl evil", "$(id)", "`id`", "web && rm -rf /", "../../etc/passwd", "*", "Web",
           "web|tee", "-rf", "a" * 64, "web\u200b"]


@pytest.mark.parametrize("raw", HOSTILE)
def test_the_recipe_input_check_refuses_anything_but_recipe_names(raw):
    import os

    done = subprocess.run([sys.executable, str(ROOT / "scripts/ci/recipe_names.py")], capture_output=True, text=True,
                          env={**os.environ, "RECIPES": raw}, timeout=30)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("::error title=recipes input::recipes: ") and done.stderr.count("\n") == 1


def test_the_recipe_input_check_passes_recipe_names_one_per_line():
    import os

    done = subprocess.run([sys.executable, str(ROOT / "scripts/ci/recipe_names.py")], capture_output=True, text=True,
                          env={**os.environ, "RECIPES": "  base web\tdb_2 "}, timeout=30)
    assert done.returncode == 0 and done.stdout == "base\nweb\ndb_2\n"


def test_a_hostile_dispatch_fails_the_plan_step_before_invoke_runs(tmp_path):
    marker = tmp_path / "ran"
    done, output = plan_step(tmp_path, {"web": "source: {ami: ami-12345678}\n"}, chosen=f"web; touch {marker}")
    assert done.returncode != 0 and output == "" and not marker.exists()
    assert "'web;' is not a recipe name" in done.stderr


def test_both_jobs_that_take_recipe_names_check_them_with_the_script():
    jobs = load("rebake.yml")["jobs"]
    for job, step in (("plan", next(s for s in jobs["plan"]["steps"] if s.get("id") == "list")),
                      ("rebake", next(s for s in jobs["rebake"]["steps"] if str(s.get("name", "")).startswith("rebake ")))):
        assert "set -f" in step["run"] and "names=$(python scripts/ci/recipe_names.py)" in step["run"], job
