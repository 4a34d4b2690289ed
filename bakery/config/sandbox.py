"""The one jinja environment bakery renders with: sandboxed, strict and bounded.

Recipes' small templates (bakery/config/templating.py) and the user data templates
(bakery/render/userdata.py) are input, and input must not keep `validate` busy or fill the memory.
Limits far above what user data (16 KiB on EC2) or a recipe's step needs: no number over
`MAX_NUMBER_ARG` handed to a function or filter (range, center, ljust...), no more than
`MAX_ITERATIONS` items from all `range()` calls of one render (nested loops), no repetition,
power or %-format that would make more than `MAX_OUTPUT` characters, no render longer than
`MAX_OUTPUT`. Going over one is a `TemplateLimit`, reported like any template error: one line
naming the template and line.
"""

from __future__ import annotations

import contextvars
import re
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment, SecurityError, safe_range

MAX_NUMBER_ARG = 100_000
MAX_ITERATIONS = 1_000_000
MAX_OUTPUT = 1 << 20
MAX_EXPONENT = 1_000
#: a %-format field wider or more precise than the output may be: "%099999999d"
_WIDE_FORMAT = re.compile(r"%[-+ #0]*(\d{7,}|\*)|%[-+ #0]*\d*\.(\d{7,}|\*)")
#: what one render (with its includes and macros) has spent of MAX_ITERATIONS
_spent: contextvars.ContextVar[list[int]] = contextvars.ContextVar("bakery_template_spent")


class TemplateLimit(SecurityError):
    """A template went over one of the limits above."""


class BoundedSandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True, **options)
        self.globals["range"] = _counted_range
        for name, fn in list(self.filters.items()):
            self.filters[name] = _bounded_filter(fn)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - jinja's own names
        _check_numbers(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and right > MAX_EXPONENT and left not in (0, 1, -1):
            raise TemplateLimit(f"{left!r} ** {right}: an exponent over {MAX_EXPONENT}")
        if operator == "*":
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_OUTPUT:
                raise TemplateLimit(f"repeating {len(seq)} items {n} times: over {MAX_OUTPUT} in all")
        if operator == "%" and isinstance(left, str) and _WIDE_FORMAT.search(left):
            raise TemplateLimit("a %-format field wider than a template may make")
        return super().call_binop(context, operator, left, right)

    def render(self, template: jinja2.Template, context: dict[str, Any]) -> str:
        """The template's text, within the limits (its includes and macros count with it)."""
        token = _spent.set([0])
        try:
            out, size = [], 0
            for chunk in template.generate(**context):
                size += len(chunk)
                if size > MAX_OUTPUT:
                    raise TemplateLimit(f"renders to more than {MAX_OUTPUT} characters")
                out.append(chunk)
            return "".join(out)
        finally:
            _spent.reset(token)


def _check_numbers(args: tuple, kwargs: dict) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_NUMBER_ARG:
            raise TemplateLimit(f"{value} handed to a function: numbers over {MAX_NUMBER_ARG} are refused")


def _counted_range(*args: int) -> range:
    r = safe_range(*args)
    spent = _spent.get(None)
    if spent is not None:
        spent[0] += len(r)
        if spent[0] > MAX_ITERATIONS:
            raise TemplateLimit(f"loops over more than {MAX_ITERATIONS} items in all")
    return r


def _bounded_filter(fn: Any) -> Any:
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_numbers(args[1:] if args else args, kwargs)  # the first is the value filtered
        return fn(*args, **kwargs)
    for attr in ("jinja_pass_arg", "__name__", "__doc__"):  # jinja reads how to call it from the function
        if hasattr(fn, attr):
            setattr(bounded, attr, getattr(fn, attr))
    return bounded
