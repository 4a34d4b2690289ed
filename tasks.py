"""This repository's tasks: bakery's own (bakery/tasks.py), so `invoke bake --recipe web` here is
the installed `bakery bake --recipe web` anywhere."""

from bakery.tasks import namespace as ns  # noqa: F401 - invoke finds the collection by this name
