"""The rebake workflow's recipe names, checked before a shell uses them.

A workflow_dispatch input (or a matrix entry) reaches the job as the environment variable RECIPES,
never inside a `run:` script, so no expression is ever executed as shell. This module is the one
place that decides what may come through: names that are recipe names (bakery's own NAME_RE),
separated by spaces, printed one per line for the step to pass on as `--recipe NAME` arguments.
Anything else (`web; curl evil`, `$(id)`, `../etc`, `*`) is refused with a GitHub error
annotation and exit 2, before anything runs.

    RECIPES="base web" python -m bakery.cli.recipe_names

It ships in the wheel, so a repository that installs bakery (the reusable workflow, `bakery init`'s
workflow) runs the same check as this one.
"""

from __future__ import annotations

import os
import re
import sys

from bakery.config.patterns import NAME_RE

MAX_NAMES = 100


def names(raw: str) -> list[str]:
    found = raw.split()
    if len(found) > MAX_NAMES:
        raise ValueError(f"{len(found)} names: at most {MAX_NAMES}")
    for name in found:
        if not re.fullmatch(NAME_RE, name):
            shown = name if name.isprintable() else ascii(name)
            raise ValueError(f"{shown!r} is not a recipe name (lowercase letters, digits, - and _)")
    return found


def main() -> int:
    try:
        print("\n".join(names(os.environ.get("RECIPES", ""))))
    except ValueError as exc:
        print(f"::error title=recipes input::recipes: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
