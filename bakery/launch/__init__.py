"""Launching an environment: plan every tier, then fill its empty slots, wait, check health.

    failover.py `invoke failover`: refused offline when the file says so, then the ENIs move
    run.py      one launch: network, plan, instances on a tracked run, health, targets, templates;
                `tier_spec`: a tier's instance, for RunInstances and for its launch template
    plan.py     per tier, before anything is created: image, user data, subnets, groups, free slots
    report.py   what a launch decided and did
"""
