"""`bakery init`: a new infrastructure repository that works at once.

    files/              what is written, as it is written (gitignore and github/ become .gitignore
                        and .github/: a wheel keeps no hidden names reliably)
    workflow_jobs.yml   the rebake workflow's jobs, shared with this repository's reusable workflow
                        (.github/workflows/bakery-rebake.yml; tests/test_workflows.py keeps them equal)
    init.py             writes the tree, never over an existing file

Everything here ships in the wheel: `pip install bakery` then `bakery init` needs nothing else.
"""
