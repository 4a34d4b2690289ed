"""The bad-input corpus, through the real command line.

Every case is a malformed recipe, environment, template or flag, run on the local cloud (the
default a new user meets; a case about AWS alone runs against an endpoint nobody listens at). Each must end with one line on stderr that starts with `error:` and
names the file (or flag) and the problem, exit 2, no traceback, and no cloud opened: the local
cloud's data directory never made (so no endpoint process, no base image build) and no network
namespace added.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support import ROOT, free_port

pytestmark = pytest.mark.e2e

GOOD_RECIPE = """\
source: {ami: ami-12345678}
variables: {v: {default: x}}
steps:
  - {name: hi, shell: echo hi}
"""
GOOD_ENV = """\
tiers:
  web:
    image: {recipe: web}
    user_data: {parts: [web.yaml.j2], variables: {greeting: hi}}
"""
GOOD_TEMPLATE = "#cloud-config\nwrite_files:\n  - {path: /etc/greeting, content: {{ greeting | yaml }}}\n"

BOMB = "".join(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9 if i else ["x"] * 9) + "]\n" for i in range(9))

NET = "network:\n  vpc: {cidr: 10.0.0.0/16}\n  subnets: {a: {cidr: 10.0.1.0/24, az: us-east-1a}, b: {cidr: 10.0.2.0/24, az: us-east-1a}}\n"
SMOKE = "checks: {{environment: {env}, tier: {tier}, commands: [{{name: c, shell: 'true'}}]}}\n"

FIFO = object()  # as a file's text: make a FIFO there

# (case id, files to write {relative path: text, or "$VARIABLE": a setting}, argv after `invoke`,
# expected text in the message)
RECIPES = [
    ("recipe-unknown-key", {"recipes/web.yaml": GOOD_RECIPE + "colour: red\n"}, ["bake", "--recipe", "web"], "web.yaml:5: colour: unknown key"),
    ("recipe-wrong-type", {"recipes/web.yaml": GOOD_RECIPE.replace("echo hi}", "echo hi, timeout: soon}")}, ["bake", "--recipe", "web"], "timeout"),
    ("recipe-steps-not-list", {"recipes/web.yaml": "source: {ami: ami-12345678}\nsteps: {a: 1}\n"}, ["bake", "--recipe", "web"], "steps"),
    ("recipe-invalid-yaml", {"recipes/web.yaml": "steps: [\n"}, ["bake", "--recipe", "web"], "invalid YAML"),
    ("recipe-tabs", {"recipes/web.yaml": "source:\n\tami: x\n"}, ["bake", "--recipe", "web"], "invalid YAML"),
    ("recipe-alias-bomb", {"recipes/web.yaml": BOMB}, ["bake", "--recipe", "web"], "alias bomb"),
    ("recipe-merge-key", {"recipes/web.yaml": "b: &b {ami: ami-12345678}\nsource: {<<: *b}\n"}, ["bake", "--recipe", "web"], "merge keys"),
    ("recipe-duplicate-key", {"recipes/web.yaml": GOOD_RECIPE + "variables: {}\n"}, ["bake", "--recipe", "web"], "duplicate key 'variables'"),
    ("recipe-huge", {"recipes/web.yaml": "# pad\n" * 60000}, ["bake", "--recipe", "web"], "byte limit"),
    ("recipe-binary", {"recipes/web.yaml": "\udcff"}, ["bake", "--recipe", "web"], "not UTF-8"),
    ("recipe-top-level-list", {"recipes/web.yaml": "- a\n"}, ["bake", "--recipe", "web"], "expected a mapping"),
    ("recipe-empty-source", {"recipes/web.yaml": "source: {}\n"}, ["bake", "--recipe", "web"], "give exactly one of ami, filter, ssm_parameter"),
    ("recipe-bad-ami", {"recipes/web.yaml": "source: {ami: image-1}\n"}, ["bake", "--recipe", "web"], "source.ami"),
    ("recipe-upload-traversal", {"recipes/web.yaml": GOOD_RECIPE + "  - {name: up, upload: {source: ../../etc/shadow, dest: /x}}\n"}, ["bake", "--recipe", "web"], "points outside"),
    ("recipe-upload-absolute", {"recipes/web.yaml": GOOD_RECIPE + "  - {name: up, upload: {source: /etc/shadow, dest: /x}}\n"}, ["bake", "--recipe", "web"], "must be relative"),
    ("recipe-script-missing", {"recipes/web.yaml": GOOD_RECIPE + "  - {name: s, script: nope.sh}\n"}, ["bake", "--recipe", "web"], "'nope.sh' does not exist"),
    ("recipe-dest-relative", {"recipes/web.yaml": GOOD_RECIPE + "  - {name: up, upload: {source: web.yaml, dest: etc/x}}\n"}, ["bake", "--recipe", "web"], "dest must be an absolute path"),
    ("recipe-dest-dotdot", {"recipes/web.yaml": GOOD_RECIPE + "  - {name: up, upload: {source: web.yaml, dest: /a/../etc}}\n"}, ["bake", "--recipe", "web"], "without '..'"),
    ("recipe-bad-cidr", {"recipes/web.yaml": GOOD_RECIPE + "builder: {ssh: {allowed_cidr: 10.0.0.0/33}}\n"}, ["bake", "--recipe", "web"], "invalid CIDR"),
    ("recipe-host-cidr", {"recipes/web.yaml": GOOD_RECIPE + "builder: {ssh: {allowed_cidr: 10.0.0.1/24}}\n"}, ["bake", "--recipe", "web"], "invalid CIDR"),
    ("recipe-bad-instance-type", {"recipes/web.yaml": GOOD_RECIPE + "builder: {instance_types: [big]}\n"}, ["bake", "--recipe", "web"], "is not an instance type"),
    ("recipe-bad-port", {"recipes/web.yaml": GOOD_RECIPE + "builder: {ssh: {port: 70000}}\n"}, ["bake", "--recipe", "web"], "builder.ssh.port"),
    ("recipe-bad-user", {"recipes/web.yaml": GOOD_RECIPE + "builder: {ssh: {user: 'root; rm -rf /'}}\n"}, ["bake", "--recipe", "web"], "builder.ssh.user"),
    ("recipe-undefined-in-step", {"recipes/web.yaml": GOOD_RECIPE + "  - {name: t, shell: 'echo {{ nope }}'}\n"}, ["bake", "--recipe", "web"], "'nope' is undefined"),
    ("recipe-template-injection", {"recipes/web.yaml": GOOD_RECIPE + "  - {name: t, shell: \"{{ ''.__class__.__mro__[1].__subclasses__() }}\"}\n"}, ["bake", "--recipe", "web"], "steps[1] (t).shell"),
    ("recipe-template-syntax", {"recipes/web.yaml": GOOD_RECIPE + "  - {name: t, shell: 'echo {{ v '}\n"}, ["bake", "--recipe", "web"], "template syntax error"),
    ("recipe-bad-image-name", {"recipes/web.yaml": GOOD_RECIPE + "image: {name: 'x'}\n"}, ["bake", "--recipe", "web"], "not a valid AMI name"),
    ("recipe-reserved-tag", {"recipes/web.yaml": GOOD_RECIPE + "image: {tags: {'bakery:complete': 'true'}}\n"}, ["bake", "--recipe", "web"], "reserved prefix"),
    ("recipe-duplicate-step", {"recipes/web.yaml": GOOD_RECIPE + "  - {name: hi, shell: echo again}\n"}, ["bake", "--recipe", "web"], "duplicate step name 'hi'"),
    ("recipe-extends-cycle", {"recipes/web.yaml": "extends: web\n" + GOOD_RECIPE}, ["bake", "--recipe", "web"], "extends cycle"),
    ("recipe-extends-missing", {"recipes/web.yaml": "extends: nothere\n"}, ["bake", "--recipe", "web"], "no such recipe 'nothere'"),
    ("recipe-retries-negative", {"recipes/web.yaml": GOOD_RECIPE.replace("echo hi}", "echo hi, retries: -1}")}, ["bake", "--recipe", "web"], "retries"),
    ("recipe-bad-policy", {"recipes/web.yaml": GOOD_RECIPE.replace("echo hi}", "echo hi, on_failure: ignore}")}, ["bake", "--recipe", "web"], "on_failure"),
    ("recipe-bad-env-name", {"recipes/web.yaml": GOOD_RECIPE.replace("echo hi}", "echo hi, env: {'1BAD': x}}")}, ["bake", "--recipe", "web"], "env"),
    ("recipe-self-alias", {"recipes/web.yaml": "a: &a [*a]\n"}, ["bake", "--recipe", "web"], "web.yaml:1: an alias refers to a value that contains it"),
    ("recipe-deep-nesting", {"recipes/web.yaml": "a: " + "[" * 5000 + "]" * 5000 + "\n"}, ["bake", "--recipe", "web"], "nested more than 64 levels deep"),
    ("recipe-step-divides-by-zero", {"recipes/web.yaml": GOOD_RECIPE + "  - {name: t, shell: 'echo {{ 1 / 0 }}'}\n"}, ["bake", "--recipe", "web"], "steps[1] (t).shell: template error: ZeroDivisionError"),
    ("recipe-step-nested-loops", {"recipes/web.yaml": GOOD_RECIPE + "  - {name: t, shell: '{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}'}\n"}, ["bake", "--recipe", "web"], "loops over more than 1000000 items"),
    ("recipe-share-aws-managed-key", {"recipes/web.yaml": GOOD_RECIPE + "builder: {root_volume: {kms_key_id: alias/aws/ebs}}\npublish: {share_with: ['111122223333']}\n"}, ["bake", "--recipe", "web"], "web.yaml: builder.root_volume.kms_key_id: alias/aws/ebs is AWS-managed: publish.share_with cannot share what it encrypts"),
    ("recipe-publish-bad-account", {"recipes/web.yaml": GOOD_RECIPE + "publish: {share_with: ['12']}\n"}, ["bake", "--recipe", "web"], "publish.share_with"),
    ("recipe-checks-empty", {"recipes/web.yaml": GOOD_RECIPE + "checks: {}\n"}, ["bake", "--recipe", "web"], "declare commands and/or a health_check"),
    ("recipe-dir-mode-of-a-file", {"recipes/web.yaml": GOOD_RECIPE + "  - {name: up, upload: {source: web.yaml, dest: /x, dir_mode: '0700'}}\n"}, ["bake", "--recipe", "web"], "web.yaml:5: steps[1].upload.dir_mode: 'web.yaml' is a file, not a directory"),
    ("recipe-image-name-after-var", {"recipes/web.yaml": GOOD_RECIPE + "image: {name: 'web-{{ v }}-{{ build_id }}'}\n"}, ["bake", "--recipe", "web", "--var", "v=a*b"], "web.yaml: image.name: renders to 'web-a*b-b-"),
    ("recipe-smoke-env-missing", {"recipes/web.yaml": GOOD_RECIPE + SMOKE.format(env="nope", tier="web")}, ["bake", "--recipe", "web"], "web.yaml: checks.environment: no environment 'nope'"),
    ("recipe-smoke-tier-missing", {"recipes/web.yaml": GOOD_RECIPE + SMOKE.format(env="prod", tier="nope")}, ["bake", "--recipe", "web"], "web.yaml: checks.tier: "),
    ("recipe-smoke-env-invalid", {"recipes/web.yaml": GOOD_RECIPE + SMOKE.format(env="prod", tier="web"), "envs/prod.yaml": GOOD_ENV + "colour: red\n"}, ["bake", "--recipe", "web"], "prod.yaml:5: colour: unknown key"),
    ("recipe-bastion-key-missing", {"recipes/web.yaml": GOOD_RECIPE + "builder: {ssh: {bastion: {host: 10.0.0.1, user: ops, key_file: keys/nope}}}\n"}, ["bake", "--recipe", "web"], "web.yaml: builder.ssh.bastion.key_file: "),
    ("recipe-bastion-port", {"recipes/web.yaml": GOOD_RECIPE + "builder: {ssh: {bastion: {host: 10.0.0.1, user: ops, port: 0}}}\n"}, ["bake", "--recipe", "web"], "builder.ssh.bastion.port"),
    ("recipe-rebake-smoke-env-missing", {"recipes/web.yaml": GOOD_RECIPE + SMOKE.format(env="nope", tier="web")}, ["rebake", "--recipe", "web"], "web.yaml: checks.environment: no environment 'nope'"),
    ("recipe-validate-smoke-env-missing", {"recipes/web.yaml": GOOD_RECIPE + SMOKE.format(env="nope", tier="web")}, ["validate"], "web.yaml: checks.environment: no environment 'nope'"),
    ("recipe-control-character", {"recipes/web.yaml": GOOD_RECIPE + "description: \x1f\n"}, ["bake", "--recipe", "web"], "web.yaml:5: invalid YAML: character '\\x1f' is not allowed in YAML"),
    ("recipe-bad-dir-mode", {"recipes/web.yaml": GOOD_RECIPE + "  - {name: up, upload: {source: web.yaml, dest: /x, dir_mode: '0799'}}\n"}, ["bake", "--recipe", "web"], "upload.dir_mode"),
    ("recipe-waiver-no-reason", {"recipes/web.yaml": GOOD_RECIPE + "vulnerabilities:\n  waive:\n    - {id: CVE-2025-1006, reason: '', expires: 2027-01-31}\n"}, ["bake", "--recipe", "web"], "web.yaml:7: vulnerabilities.waive[0].reason: a waiver needs a reason"),
    ("recipe-waiver-bad-id", {"recipes/web.yaml": GOOD_RECIPE + "vulnerabilities: {waive: [{id: openssl, reason: r, expires: 2027-01-31}]}\n"}, ["validate"], "web.yaml:5: vulnerabilities.waive[0].id: 'openssl' is not a vulnerability id"),
    ("recipe-waiver-impossible-date", {"recipes/web.yaml": GOOD_RECIPE + "vulnerabilities: {waive: [{id: CVE-2025-1006, reason: r, expires: 2027-02-30}]}\n"}, ["bake", "--recipe", "web"], "web.yaml:5: '2027-02-30' is not a valid date"),
]
FLAGS = [
    ("flag-unknown-recipe", {}, ["bake", "--recipe", "nope"], "no such recipe 'nope'"),
    ("flag-recipe-traversal", {}, ["bake", "--recipe", "../../etc/passwd"], "recipe name '../../etc/passwd' is invalid"),
    ("flag-var-no-equals", {}, ["bake", "--recipe", "web", "--var", "v"], "--var 'v': expected KEY=VALUE"),
    ("flag-var-undeclared", {}, ["bake", "--recipe", "web", "--var", "w=1"], "variable 'w' is not declared"),
    ("flag-var-twice", {}, ["bake", "--recipe", "web", "--var", "v=1", "--var", "v=2"], "--var v: given twice"),
    ("flag-unknown-env", {}, ["launch", "--env", "nope"], "no such environment 'nope'"),
    ("flag-env-traversal", {}, ["launch", "--env", "../x"], "environment name '../x' is invalid"),
    ("flag-unknown-tier", {}, ["launch", "--env", "prod", "--tier", "nope"], "no tier 'nope'"),
    ("flag-render-unknown-tier", {}, ["render", "--env", "prod", "--tier", "nope"], "no tier 'nope'"),
    ("flag-prune-keep-zero", {}, ["prune", "--recipe", "web", "--keep", "0"], "keep at least one image"),
    ("flag-prune-unknown", {}, ["prune", "--recipe", "nope", "--keep", "2"], "no such recipe 'nope'"),
    ("flag-janitor-duration", {}, ["janitor", "--older-than", "soon"], "--older-than 'soon'"),
    ("flag-region-newline", {"$INVOKE_BAKERY_REGION": "us-east-1\nx"}, ["bake", "--recipe", "web"], "is not a region name"),
    ("recipe-upload-fifo", {"recipes/pipe": FIFO, "recipes/web.yaml": GOOD_RECIPE + "  - {name: up, upload: {source: pipe, dest: /x}}\n"}, ["bake", "--recipe", "web"], "steps[1].upload.source: 'pipe' is not a regular file or a directory"),
    ("flag-prune-keep-word", {}, ["prune", "--recipe", "web", "--keep", "abc"], "--keep 'abc': expected a whole number"),
    ("flag-prune-keep-huge", {}, ["prune", "--recipe", "web", "--keep", "9" * 30], "out of range"),
    ("flag-janitor-infinite", {}, ["janitor", "--older-than", "1e999d"], "--older-than '1e999d'"),
    ("flag-rebake-unknown", {}, ["rebake", "--recipe", "nope"], "no such recipe 'nope'"),
    ("flag-failover-no-persistent", {}, ["failover", "--env", "prod", "--tier", "web"], "has no persistent interfaces"),
    ("flag-failover-from-without-key", {"envs/prod.yaml": NET + GOOD_ENV.replace("image: {recipe: web}", "image: {recipe: web}\n    standby: 1\n    interfaces: [{device_index: 0, subnet: a}, {device_index: 1, subnet: a, private_ip: 10.0.1.9, persistent: true}]")
                                        + "    health_check: {port: 80, from: ops}\n  ops: {image: {recipe: web}, strategy: baked}\n", "$INVOKE_BAKERY_CLOUD": "aws"},
     ["failover", "--env", "prod", "--tier", "web"], "ssh.key_file: is not set; tiers.web.health_check.from: ops"),
    ("flag-network-up-bad-env", {"envs/prod.yaml": NET.replace("10.0.2.0/24", "10.0.1.128/25") + GOOD_ENV}, ["network.up", "--env", "prod"], "network.subnets.b: 10.0.1.128/25 overlaps subnet a"),
    ("flag-network-status-bad-env", {"envs/prod.yaml": NET.replace("us-east-1a}, b", "eu-west-1a}, b") + GOOD_ENV}, ["network.status", "--env", "prod"], "network.subnets.a.az: eu-west-1a is not a zone of us-east-1"),
    ("flag-render-bad-template", {"userdata/web.yaml.j2": GOOD_TEMPLATE + "x: {{ 1 / 0 }}\n"}, ["render", "--env", "prod", "--tier", "web"], "userdata/web.yaml.j2:4: ZeroDivisionError"),
    ("flag-dry-run-bad-env", {"envs/prod.yaml": NET.replace("10.0.0.0/16", "10.0.0.0/12") + GOOD_ENV}, ["launch", "--env", "prod", "--dry-run"], "network.vpc.cidr: 10.0.0.0/12"),
    ("flag-validate-bad-env", {"envs/prod.yaml": NET.replace("us-east-1a}, b", "us-east-1q}, b") + GOOD_ENV}, ["validate"], "network.subnets.a.az: us-east-1q is not a zone of us-east-1"),
    ("flag-ssh-unknown-env", {}, ["ssh", "--env", "nope", "--tier", "web"], "no such environment 'nope'"),
    ("flag-var-file-missing", {}, ["bake", "--recipe", "web", "--var-file", "nope.yaml"], "--var-file nope.yaml: file not found"),
    ("flag-recipes-dir-missing", {"$INVOKE_BAKERY_RECIPES_DIR": "nowhere"}, ["bake", "--recipe", "web"], "no such directory for recipes (settings: recipes_dir"),
    ("flag-path-with-newline", {"$INVOKE_BAKERY_RECIPES_DIR": "a\nb"}, ["bake", "--recipe", "web"], "a\\nb: no such directory"),
    ("flag-missing-recipe", {}, ["bake"], "missing --recipe"),
    ("flag-missing-env-and-tier", {}, ["render"], "missing --env and --tier"),
]
ENVS = [
    ("env-unknown-key", {"envs/prod.yaml": GOOD_ENV + "colour: red\n"}, "prod.yaml:5: colour: unknown key"),
    ("env-name-key", {"envs/prod.yaml": "name: other\n" + GOOD_ENV}, "an environment's name is its file name"),
    ("env-no-tiers", {"envs/prod.yaml": "tiers: {}\n"}, "tiers"),
    ("env-count-type", {"envs/prod.yaml": GOOD_ENV.replace("image: {recipe: web}", "image: {recipe: web}\n    count: lots")}, "tiers.web.count"),
    ("env-count-negative", {"envs/prod.yaml": GOOD_ENV.replace("image: {recipe: web}", "image: {recipe: web}\n    count: -1")}, "tiers.web.count"),
    ("env-image-two", {"envs/prod.yaml": GOOD_ENV.replace("{recipe: web}", "{recipe: web, ami: ami-12345678}")}, "give exactly one of recipe, ami, ssm_parameter"),
    ("env-group-count-outside", {"envs/prod.yaml": GOOD_ENV.replace("image: {recipe: web}", "image: {recipe: web}\n    count: 5\n    auto_scaling: {min: 1, max: 3}")}, "prod.yaml:4: tiers.web.count: 5: an Auto Scaling tier's count is its desired capacity, between auto_scaling.min (1) and max (3)"),
    ("env-group-min-over-max", {"envs/prod.yaml": GOOD_ENV.replace("image: {recipe: web}", "image: {recipe: web}\n    auto_scaling: {min: 4, max: 3}")}, "tiers.web.auto_scaling.min: 4 is more than max (3)"),
    ("env-group-standby", {"envs/prod.yaml": GOOD_ENV.replace("image: {recipe: web}", "image: {recipe: web}\n    standby: 1\n    auto_scaling: {min: 1, max: 3}")}, "tiers.web.standby: not with auto_scaling"),
    ("env-group-interfaces", {"envs/prod.yaml": NET + GOOD_ENV.replace("image: {recipe: web}", "image: {recipe: web}\n    interfaces: [{device_index: 0, subnet: a}]\n    auto_scaling: {min: 1, max: 3}")}, "tiers.web.interfaces: not with auto_scaling"),
    ("env-group-percentage", {"envs/prod.yaml": GOOD_ENV.replace("image: {recipe: web}", "image: {recipe: web}\n    auto_scaling: {min: 1, max: 3, min_healthy_percentage: 120}")}, "tiers.web.auto_scaling.min_healthy_percentage"),
    ("env-bad-strategy", {"envs/prod.yaml": GOOD_ENV.replace("image: {recipe: web}", "image: {recipe: web}\n    strategy: magic")}, "strategy"),
    ("env-baked-with-userdata", {"envs/prod.yaml": GOOD_ENV.replace("image: {recipe: web}", "image: {recipe: web}\n    strategy: baked")}, "launches the image alone"),
    ("env-reserved-var", {"envs/prod.yaml": "variables: {tier: x}\n" + GOOD_ENV}, "name is reserved"),
    ("env-reserved-tag", {"envs/prod.yaml": "tags: {'aws:x': y}\n" + GOOD_ENV}, "reserved prefix"),
    ("env-secret-akia", {"envs/prod.yaml": GOOD_ENV.replace("greeting: hi", "greeting: AKIAIOSFODNN7EXAMPLE")}, "tiers.web"),
    ("env-secret-password", {"envs/prod.yaml": GOOD_ENV.replace("greeting: hi", "greeting: hi, db_password: hunter2")}, "db_password"),
    ("env-secret-pem", {"envs/prod.yaml": GOOD_ENV.replace("greeting: hi", "greeting: '-----BEGIN RSA PRIVATE KEY-----\\nMIIE\\n-----END RSA PRIVATE KEY-----'")}, "tiers.web"),
    ("env-bad-secret-ref", {"envs/prod.yaml": GOOD_ENV + "    secrets: {DB: 'vault:/x'}\n"}, "secrets"),
    ("env-template-missing", {"envs/prod.yaml": GOOD_ENV.replace("[web.yaml.j2]", "[nope.yaml.j2]")}, "nope.yaml.j2"),
    ("env-template-traversal", {"envs/prod.yaml": GOOD_ENV.replace("[web.yaml.j2]", "[../recipes/web.yaml]")}, "must be a path inside userdata/"),
    ("env-include-traversal", {"userdata/web.yaml.j2": "#cloud-config\n{% include '../recipes/web.yaml' %}\n"}, "refused"),
    ("env-template-injection", {"userdata/web.yaml.j2": "#cloud-config\nx: {{ greeting.__class__.__mro__ }}\n"}, "userdata/web.yaml.j2"),
    ("env-undefined-var", {"envs/prod.yaml": GOOD_ENV.replace("greeting: hi", "other: hi")}, "'greeting' is undefined"),
    ("env-template-syntax", {"userdata/web.yaml.j2": "#cloud-config\nx: {{ greeting \n"}, "syntax error"),
    ("env-schema-invalid", {"userdata/web.yaml.j2": "#cloud-config\npackages: nginx\n"}, "packages: 'nginx' is not of type 'array'"),
    ("env-yaml-injection-proof", {"userdata/web.yaml.j2": "#cloud-config\nwrite_files: {{ greeting }}\n"}, "cloud-config schema"),
    ("env-user-data-too-big", {"envs/prod.yaml": GOOD_ENV.replace("greeting: hi", "greeting: '" + "".join(
        f"{(i * 7919) % 1000003:x}" for i in range(6000)) + "'")}, "over EC2's 16383-byte limit"),
    ("env-bad-cidr", {"envs/prod.yaml": "network:\n  vpc: {cidr: 10.0.0.0/99}\n  subnets: {a: {cidr: 10.0.1.0/24}}\n" + GOOD_ENV}, "invalid CIDR"),
    ("env-bad-ip", {"envs/prod.yaml": "network:\n  vpc: {cidr: 10.0.0.0/16}\n  subnets: {a: {cidr: 10.0.1.0/24}}\n" + GOOD_ENV.replace(
        "image: {recipe: web}", "image: {recipe: web}\n    interfaces: [{device_index: 0, subnet: a, private_ip: 10.0.1.300}]")}, "invalid IPv4 address"),
    ("env-check-from-unknown", {"envs/prod.yaml": GOOD_ENV + "    health_check: {port: 80, from: app}\n"}, "tiers.web.health_check.from: no tier 'app'"),
    ("env-check-from-itself", {"envs/prod.yaml": GOOD_ENV + "    health_check: {port: 80, from: web}\n"}, "cannot be checked from itself"),
    ("env-check-interface", {"envs/prod.yaml": GOOD_ENV + "    health_check: {port: 80, interface: 1}\n"}, "no interface with device_index 1"),
    ("env-check-cloud-init-from", {"envs/prod.yaml": GOOD_ENV + "    health_check: {type: cloud-init, from: web}\n"}, "'from' and 'interface' do not apply"),
    ("env-check-from-without-key", {"envs/prod.yaml": GOOD_ENV + "    health_check: {port: 80, from: ops}\n"
                                    "  ops: {image: {recipe: web}, strategy: baked}\n",
                                    "$INVOKE_BAKERY_CLOUD": "aws"}, "ssh.key_file: is not set; tiers.web.health_check.from: ops"),
    ("env-template-divides-by-zero", {"userdata/web.yaml.j2": GOOD_TEMPLATE + "x: {{ 1 / 0 }}\n"}, "userdata/web.yaml.j2:4: ZeroDivisionError"),
    ("env-template-includes-itself", {"userdata/web.yaml.j2": "#cloud-config\n{% include 'web.yaml.j2' %}\n"}, "web.yaml.j2:2: includes nested more than 32 deep"),
    ("env-template-macro-recursion", {"userdata/web.yaml.j2": "#cloud-config\n{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}\n"}, "web.yaml.j2:2: calls nested more than 32 deep"),
    ("env-template-nested-loops", {"userdata/web.yaml.j2": "#cloud-config\n{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}\n"}, "web.yaml.j2:2: loops over more than 1000000 items"),
    ("env-template-huge-repeat", {"userdata/web.yaml.j2": "#cloud-config\nx: {{ 'a' * 100000000 }}\n"}, "web.yaml.j2:2: repeating 1 items 100000000 times"),
    ("env-template-huge-argument", {"userdata/web.yaml.j2": "#cloud-config\nx: {{ 'a'|center(999999999) }}\n"}, "999999999 handed to a function"),
    ("env-template-wide-format", {"userdata/web.yaml.j2": "#cloud-config\nx: {{ '%0999999999d' % 1 }}\n"}, "a %-format field wider"),
    ("env-template-huge-power", {"userdata/web.yaml.j2": "#cloud-config\nx: {{ 7 ** 99999999 }}\n"}, "a power of 3 bits to 99999999: over 1048576 bits"),
    ("env-template-kept-range", {"userdata/web.yaml.j2": "#cloud-config\n{% set r = range(99999) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}\n"}, "loops over more than 1000000 items"),
    ("env-template-wide-brace", {"userdata/web.yaml.j2": "#cloud-config\nx: {{ '{:0999999999}'.format(1) }}\n"}, "a format field wider"),
    ("env-template-joined-repeat", {"userdata/web.yaml.j2": "#cloud-config\n{% set s = 'x' * 1000000 %}x: {{ ([s] * 1000)|join }}\n"}, "over 1048576 characters in all"),
    ("env-cloud-config-self-alias", {"userdata/web.yaml.j2": "#cloud-config\ndebug: &a [*a]\n"}, "an alias that refers to a value containing it"),
    ("env-cloud-config-deep", {"userdata/web.yaml.j2": "#cloud-config\nruncmd: " + "[" * 3000 + "]" * 3000 + "\n"}, "nested more than 64 levels deep"),
    ("env-vpc-too-large", {"envs/prod.yaml": NET.replace("10.0.0.0/16", "10.0.0.0/8") + GOOD_ENV}, "network.vpc.cidr: 10.0.0.0/8: EC2 takes VPC and subnet blocks from /16"),
    ("env-subnet-too-small", {"envs/prod.yaml": NET.replace("10.0.2.0/24", "10.0.2.0/29") + GOOD_ENV}, "network.subnets.b.cidr: 10.0.2.0/29"),
    ("env-subnets-overlap", {"envs/prod.yaml": NET.replace("10.0.2.0/24", "10.0.1.128/25") + GOOD_ENV}, "network.subnets.b: 10.0.1.128/25 overlaps subnet a"),
    ("env-port-too-high", {"envs/prod.yaml": "network:\n  vpc: {cidr: 10.0.0.0/16}\n  subnets: {a: {cidr: 10.0.1.0/24, az: us-east-1a}, b: {cidr: 10.0.2.0/24, az: us-east-1a}}\n  security_groups: {g: {ingress: [{ports: 70000, cidr: 0.0.0.0/0}]}}\n" + GOOD_ENV}, "ports 70000: a port is 0 to 65535"),
    ("env-ports-reversed", {"envs/prod.yaml": "network:\n  vpc: {cidr: 10.0.0.0/16}\n  subnets: {a: {cidr: 10.0.1.0/24, az: us-east-1a}, b: {cidr: 10.0.2.0/24, az: us-east-1a}}\n  network_acls: {n: {subnets: [a], ingress: [{rule: 1, action: allow, ports: 90-80, cidr: 0.0.0.0/0}]}}\n" + GOOD_ENV}, "ports 90-80: the range is reversed"),
    ("env-reserved-address", {"envs/prod.yaml": NET + GOOD_ENV + "    interfaces: [{device_index: 0, subnet: a, private_ip: 10.0.1.10}]\n".replace("10.0.1.10", "10.0.1.3")}, "tiers.web.interfaces[0]: 10.0.1.3 is one EC2 reserves in subnet a"),
    ("env-address-twice", {"envs/prod.yaml": NET + GOOD_ENV + "    interfaces: [{device_index: 0, subnet: a, private_ip: 10.0.1.10}]\n" + "  db:\n    image: {recipe: web}\n    strategy: baked\n" + "    interfaces: [{device_index: 0, subnet: a, private_ip: 10.0.1.10}]\n"}, "tiers.db.interfaces[0]: 10.0.1.10 is also tiers.web.interfaces[0]'s"),
    ("env-secondary-is-primary", {"envs/prod.yaml": NET + GOOD_ENV + "    interfaces: [{device_index: 0, subnet: a, private_ip: 10.0.1.10}]\n".replace("10.0.1.10}", "10.0.1.10, secondary_ips: [10.0.1.10]}")}, "an address is given twice"),
    ("env-tag-key-too-long", {"envs/prod.yaml": "tags:\n  " + "k" * 129 + ": v\n" + GOOD_ENV}, "EC2 takes tag keys of 1 to 128 characters"),
    ("env-tag-value-too-long", {"envs/prod.yaml": "tags:\n  k: " + "v" * 257 + "\n" + GOOD_ENV}, "its value is 257 characters; EC2 takes at most 256"),
    ("env-io1-without-iops", {"envs/prod.yaml": GOOD_ENV + "    root_volume: {size_gb: 8, type: io1}\n"}, "tiers.web.root_volume: an io1 volume needs iops"),
    ("env-kms-unencrypted", {"envs/prod.yaml": GOOD_ENV + "    root_volume: {encrypted: false, kms_key_id: alias/x}\n"}, "kms_key_id is set but encrypted is false"),
    ("env-gp2-iops", {"envs/prod.yaml": GOOD_ENV + "    root_volume: {type: gp2, iops: 3000}\n"}, "a gp2 volume's IOPS are not provisioned"),
    ("env-io2-iops-over", {"envs/prod.yaml": GOOD_ENV + "    root_volume: {size_gb: 8, type: io2, iops: 9000}\n"}, "iops 9000: a 8 GiB io2 volume takes 100 to 8000"),
    ("env-zone-of-another-region", {"envs/prod.yaml": NET.replace("us-east-1a}, b", "eu-west-1a}, b") + GOOD_ENV}, "network.subnets.a.az: eu-west-1a is not a zone of us-east-1"),
    ("env-zone-that-does-not-exist", {"envs/prod.yaml": NET.replace("us-east-1a}, b", "us-east-1z}, b") + GOOD_ENV}, "us-east-1z is not a zone of us-east-1"),
    ("env-too-many-interfaces", {"envs/prod.yaml": NET + GOOD_ENV + "    interfaces: [{device_index: 0, subnet: a}, {device_index: 1, subnet: a}, {device_index: 2, subnet: a}]\n"}, "tiers.web.interfaces: 3 interfaces: a t3.micro takes at most 2 (EC2's MaximumNetworkInterfaces"),
    ("env-device-index-over", {"envs/prod.yaml": NET + GOOD_ENV + "    interfaces: [{device_index: 0, subnet: a}, {device_index: 5, subnet: a}]\n"}, "tiers.web.interfaces[1].device_index: 5: a t3.micro takes device indexes 0 to 1"),
    ("env-too-many-addresses", {"envs/prod.yaml": NET + GOOD_ENV + "    interfaces: [{device_index: 0, subnet: a, secondary_ip_count: 2}]\n"}, "tiers.web.interfaces[0]: 3 private IPv4 addresses: a t3.micro's interface takes at most 2"),
    ("env-include-absolute", {"userdata/web.yaml.j2": "#cloud-config\n{% include '/etc/passwd' %}\n"}, "userdata/web.yaml.j2:2: template path '/etc/passwd' refused"),
    ("env-includes-each-other", {"userdata/web.yaml.j2": "#cloud-config\n{% include 'b.j2' %}\n", "userdata/b.j2": "{% include 'web.yaml.j2' %}\n"}, "includes nested more than 32 deep"),
    ("env-bastion-key-missing", {"envs/prod.yaml": "ssh: {key_file: /etc/hostname, bastion: {host: 10.0.0.1, user: ops, key_file: nope}}\n" + GOOD_ENV
                                 + "    health_check: {port: 80, from: ops}\n  ops: {image: {recipe: web}, strategy: baked}\n", "$INVOKE_BAKERY_CLOUD": "aws"}, "ssh.bastion.key_file: "),
    ("env-template-extends-itself", {"userdata/web.yaml.j2": "{% extends 'web.yaml.j2' %}\n"}, "templates extend each other more than 32 deep"),
    ("env-template-loops-over-self", {"userdata/web.yaml.j2": "#cloud-config\n{% for a in self %}{% endfor %}\n"}, "userdata/web.yaml.j2:2: KeyError: 0"),
    ("env-persistent-primary", {"envs/prod.yaml": GOOD_ENV.replace("image: {recipe: web}", "image: {recipe: web}\n    interfaces: [{device_index: 0, subnet: a, private_ip: 10.0.1.9, persistent: true}]")}, "cannot be device_index 0"),
    # the secret lint (#15 item 4): names, key blocks, cloud-config's password modules, waivers
    ("env-secret-name-anywhere", {"envs/prod.yaml": GOOD_ENV.replace("greeting: hi", "greeting: hi, db_password_prod: hunter2")}, "tiers.web.user_data.variables.db_password_prod: key named like a secret has a literal value [rule secret-name]"),
    ("env-secret-pgp-block", {"envs/prod.yaml": GOOD_ENV.replace("greeting: hi", "greeting: '-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBGRm\n-----END PGP PRIVATE KEY BLOCK-----'")}, "tiers.web.user_data.variables.greeting: contains a PGP private key block (line 1) [rule pgp-private-key]"),
    ("env-secret-connection-string", {"envs/prod.yaml": GOOD_ENV.replace("greeting: hi", "greeting: hi, db_url: 'postgres://app:hunter2@db/app'")}, "variables.db_url: contains a URL with a password in it [rule connection-string]"),
    ("env-secret-chpasswd", {"userdata/web.yaml.j2": "#cloud-config\nchpasswd:\n  users: [{name: ops, type: text, password: hunter2}]\n"}, "userdata/web.yaml.j2: rendered cloud-config: chpasswd.users.0.password: a chpasswd password is a plaintext password [rule cc-password]"),
    ("env-secret-waiver-no-reason", {"envs/prod.yaml": "secret_lint: {allow: [{field: x, rule: secret-name}]}\n" + GOOD_ENV}, "prod.yaml:1: secret_lint.allow[0].reason: required field is missing"),
    ("env-secret-waiver-stale", {"envs/prod.yaml": "secret_lint: {allow: [{field: variables.token, rule: secret-name, reason: gone}]}\n" + GOOD_ENV}, "secret_lint.allow[0]: waives nothing: no finding at field 'variables.token' breaks rule secret-name"),
]


def corpus():
    for case, files, argv, expected in RECIPES + FLAGS:
        yield pytest.param(files, argv, expected, id=case)
    for case, files, expected in ENVS:
        yield pytest.param(files, ["launch", "--env", "prod"], expected, id=case)


def test_the_corpus_is_large():
    assert len(list(corpus())) >= 60


def network_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.mark.parametrize("files, argv, expected", list(corpus()))
def test_bad_input_is_refused_cleanly(tmp_path, files, argv, expected):
    project = {"recipes/web.yaml": GOOD_RECIPE, "envs/prod.yaml": GOOD_ENV, "userdata/web.yaml.j2": GOOD_TEMPLATE,
               **files}
    settings = {}
    for rel, text in project.items():
        if rel.startswith("$"):  # not a file: a setting in the environment
            settings[rel[1:]] = text
            continue
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is FIFO:
            os.mkfifo(path)
        else:
            path.write_bytes(text.encode("utf-8", "surrogateescape"))
    local_cloud = tmp_path / "local-cloud"
    # on AWS (a case can ask for it), an endpoint nobody listens at: any call would fail otherwise
    env = {**os.environ, "INVOKE_BAKERY_CLOUD": "local", "BAKERY_DATA_DIR": str(local_cloud),
           "INVOKE_BAKERY_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_ACCESS_KEY_ID": "corpus",
           "AWS_SECRET_ACCESS_KEY": "corpus",
           "INVOKE_BAKERY_RECIPES_DIR": str(tmp_path / "recipes"), "INVOKE_BAKERY_ENVS_DIR": str(tmp_path / "envs"),
           "INVOKE_BAKERY_USERDATA_DIR": str(tmp_path / "userdata"), "INVOKE_BAKERY_STATE_DIR": str(tmp_path / "state"),
           **settings}
    env.pop("BAKERY_DEBUG", None)
    env.pop("INVOKE_BAKERY_DATA_DIR", None)
    namespaces = network_namespaces()
    try:
        out = subprocess.run([sys.executable, "-m", "invoke", *argv], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
    finally:
        opened = sorted(str(p.relative_to(local_cloud)) for p in local_cloud.glob("*"))
        if opened:  # the case fails: stop the cloud it started before saying so
            subprocess.run([sys.executable, "-m", "invoke", "local.down", "--purge"], cwd=ROOT, env=env,
                           capture_output=True, timeout=120)
    lines = out.stderr.strip().splitlines()
    shown = out.stdout + lines[0] if argv[0] == "validate" and lines else lines[0] if lines else ""  # validate: a line a problem on stdout
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "internal error" not in lines[0]
    assert expected in shown, shown
    assert opened == []
    assert network_namespaces() <= namespaces


def test_validate_reports_the_network_and_ec2_limit_problems_of_every_environment_without_a_cloud(tmp_path):
    """One line a problem, each naming its file, line and field; every environment is read (a
    bad one does not hide the next); no cloud is opened."""
    files = {
        "envs/overlap.yaml": NET.replace("10.0.2.0/24", "10.0.1.128/25") + GOOD_ENV,
        "envs/enis.yaml": NET + GOOD_ENV + "    interfaces: [{device_index: 0, subnet: a}, {device_index: 1, subnet: a}, "
                                           "{device_index: 2, subnet: b}]\n",
        "envs/zone.yaml": NET.replace("us-east-1a}, b", "us-west-2a}, b") + GOOD_ENV,
        "envs/reserved.yaml": NET + GOOD_ENV + "    interfaces: [{device_index: 0, subnet: b, private_ip: 10.0.2.255}]\n",
        "envs/fine.yaml": NET + GOOD_ENV,
        "recipes/web.yaml": GOOD_RECIPE, "userdata/web.yaml.j2": GOOD_TEMPLATE,
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    env = {**os.environ, "INVOKE_BAKERY_CLOUD": "local", "BAKERY_DATA_DIR": str(tmp_path / "local-cloud"),
           "INVOKE_BAKERY_PROJECT_DIR": str(tmp_path), "INVOKE_BAKERY_STATE_DIR": str(tmp_path / "state")}
    namespaces = network_namespaces()
    out = subprocess.run([sys.executable, "-m", "invoke", "validate"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    problems = sorted(line.split("/envs/", 1)[1] for line in out.stdout.splitlines())
    assert problems == [
        "enis.yaml:8: tiers.web.interfaces: 3 interfaces: a t3.micro takes at most 2 (EC2's MaximumNetworkInterfaces "
        "for the type)",
        "overlap.yaml:3: network.subnets.b: 10.0.1.128/25 overlaps subnet a (10.0.1.0/24): a VPC's subnets cannot "
        "share addresses",
        "reserved.yaml:8: tiers.web.interfaces[0]: 10.0.2.255 is one EC2 reserves in subnet b: the first four "
        "(10.0.2.0-10.0.2.3) and the last (10.0.2.255) of every subnet",
        "zone.yaml: network.subnets.a.az: us-west-2a is not a zone of us-east-1, the region bakery uses (zones: "
        "us-east-1a, us-east-1b, us-east-1c, us-east-1d, us-east-1e, us-east-1f)",
    ], out.stdout
    assert out.returncode == 2 and out.stderr == "error: 4 problem(s) in 6 file(s)\n", out.stderr
    assert not (tmp_path / "local-cloud").exists() and network_namespaces() <= namespaces


def test_rebake_checks_every_recipe_offline_and_opens_no_cloud_when_none_is_left_to_bake(tmp_path):
    """The scheduled path: each recipe the files refuse fails on its own row (the others would
    go on); with none left, no cloud is opened."""
    files = {"recipes/web.yaml": GOOD_RECIPE + SMOKE.format(env="nope", tier="web"),
             "recipes/app.yaml": GOOD_RECIPE + "image: {name: 'app-{{ v }}'}\n", "envs/prod.yaml": GOOD_ENV}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    env = {**os.environ, "INVOKE_BAKERY_CLOUD": "local", "BAKERY_DATA_DIR": str(tmp_path / "local-cloud"),
           "INVOKE_BAKERY_PROJECT_DIR": str(tmp_path), "INVOKE_BAKERY_STATE_DIR": str(tmp_path / "state")}
    out = subprocess.run([sys.executable, "-m", "invoke", "rebake", "--var", "v=a*b", "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    import json

    rows = {row["recipe"]: (row["decision"], row["reason"]) for row in json.loads(out.stdout)}
    assert rows["web"][0] == rows["app"][0] == "failed", rows
    assert "checks.environment: no environment 'nope'" in rows["web"][1]
    assert "image.name: renders to 'app-a*b'" in rows["app"][1]
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1] == "error: 2 recipe(s) failed: app, web"
    assert not (tmp_path / "local-cloud").exists()
