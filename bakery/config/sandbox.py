"""The one jinja environment bakery renders with: sandboxed, strict and bounded.

Recipes' small templates (bakery/config/templating.py) and the user data templates
(bakery/render/userdata.py) are input, and input must not keep `validate` busy or fill the memory.
Limits far above what user data (16 KiB on EC2) or a recipe's step needs: no number over
`MAX_NUMBER_ARG` handed to what makes text of that size (center, ljust, indent, batch...), no
more than `MAX_ITERATIONS` items taken from `range()`s in one render (nested loops, a range kept
and looped again), no repetition, concatenation, number, power or format width that would make
more than `MAX_OUTPUT` characters (or `MAX_BITS`), no render longer than `MAX_OUTPUT`, includes
and macro calls nested and extends chained no deeper than `MAX_NESTING`; no `lipsum`. Left open: `~` joins cannot be intercepted, so doubling a string with it in a
namespace loop is bounded only by the iteration budget. Going over one is a `TemplateLimit`, reported like any template error: one line
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
MAX_BITS = 1 << 20  # an integer a template makes: a million bits is already 300,000 digits
MAX_NESTING = 32  # includes within includes, macro calls within macro calls
#: a %-format field wider or more precise than the output may be: "%099999999d", "%(a)0999999999d"
_WIDE_FORMAT = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(?:\d{7,}|\*)|%(?:\([^)]*\))?[-+ #0]*\d*\.(?:\d{7,}|\*)")
#: the same for str.format: "{:0999999999}"
_WIDE_BRACE = re.compile(r"\{[^{}]*:[^{}]*?\d{7,}")
#: what makes text as long as a number it is given (methods by name, filters by name)
_SIZED_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
_SIZED_FILTERS = frozenset({"center", "indent", "batch", "slice", "truncate", "wordwrap"})
#: what one render (with its includes and macros) has spent of MAX_ITERATIONS
_spent: contextvars.ContextVar[list[int]] = contextvars.ContextVar("bakery_template_spent")
#: how deep macro calls are nested now (a macro renders all of its text inside its call)
_calls: contextvars.ContextVar[int] = contextvars.ContextVar("bakery_template_calls", default=0)
#: an included template's context carries how deep it is included: includes are generators that
#: interleave, so the depth travels with the context rather than in a counter
_DEPTH = "bakery_include_depth"
_EXTENDS = "bakery_extends_chain"


class TemplateLimit(SecurityError):
    """A template went over one of the limits above."""


class _NestedTemplate(jinja2.Template):
    def new_context(self, vars: dict | None = None, shared: bool = False, locals: dict | None = None) -> Any:
        depth = (vars or {}).get(_DEPTH, 0) + 1
        if depth > MAX_NESTING:  # caught here, long before Python's recursion limit (and fast)
            raise TemplateLimit(f"includes nested more than {MAX_NESTING} deep (a template that includes itself?)")
        context = super().new_context(vars, shared, locals)
        context.vars[_DEPTH] = depth
        return context

    @classmethod
    def _from_namespace(cls, environment: Any, namespace: Any, globals: Any) -> Any:
        """`{% extends %}` renders the parent's root with the child's own context: the length of
        the chain is counted on that context (jinja's private hook; tests/test_bad_input_corpus.py
        has a template that extends itself)."""
        template = super()._from_namespace(environment, namespace, globals)
        root = template.root_render_func

        def counted_root(context: Any) -> Any:
            chain = context.vars.get(_EXTENDS, 0) + 1
            if chain > MAX_NESTING:
                raise TemplateLimit(f"templates extend each other more than {MAX_NESTING} deep "
                                    "(a template that extends itself?)")
            context.vars[_EXTENDS] = chain
            yield from root(context)
        template.root_render_func = counted_root
        return template


class BoundedSandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})
    template_class = _NestedTemplate

    def __init__(self, **options: Any) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True, **options)
        self.globals["range"] = _counted_range
        self.globals.pop("lipsum", None)  # lipsum(n, html, min, max) makes n x max words
        for name in _SIZED_FILTERS:
            self.filters[name] = _bounded_filter(self.filters[name])
        self.filters["format"] = _checked_format(self.filters["format"])

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - jinja's own names
        if getattr(__obj, "__name__", "") in _SIZED_METHODS:
            _check_numbers(args, kwargs)
        depth = _calls.get() + 1
        if depth > MAX_NESTING:
            raise TemplateLimit(f"calls nested more than {MAX_NESTING} deep (a macro that calls itself?)")
        token = _calls.set(depth)
        try:
            return super().call(__context, __obj, *args, **kwargs)
        finally:
            _calls.reset(token)

    def wrap_str_format(self, value: Any) -> Any:
        """`'{:0999999999}'.format(1)`: jinja hands str.format to its own formatter here."""
        fmt = getattr(value, "__self__", None)
        if isinstance(fmt, str) and getattr(value, "__name__", "") in ("format", "format_map") \
                and _WIDE_BRACE.search(fmt):
            raise TemplateLimit("a format field wider than a template may make")
        return super().wrap_str_format(value)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        numbers = isinstance(left, int) and isinstance(right, int)
        if operator == "**" and numbers and abs(left) > 1 and right > 0 and (
                right > MAX_EXPONENT or left.bit_length() * right > MAX_BITS):
            raise TemplateLimit(f"a power of {left.bit_length()} bits to {right}: over {MAX_BITS} bits")
        if operator == "*" and numbers and left.bit_length() + right.bit_length() > MAX_BITS:
            raise TemplateLimit(f"a product over {MAX_BITS} bits")
        if operator == "*" and not numbers:
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and _weight(seq) * n > MAX_OUTPUT:
                raise TemplateLimit(f"repeating {len(seq)} items {n} times: over {MAX_OUTPUT} characters in all")
        if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, type(left)) \
                and _weight(left) + _weight(right) > MAX_OUTPUT:
            raise TemplateLimit(f"joining over {MAX_OUTPUT} characters")
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


def _weight(seq: Any) -> int:
    """Characters a str, or a list of strs, stands for (an item that is not a str counts one)."""
    if isinstance(seq, str):
        return len(seq)
    return sum(len(x) if isinstance(x, str) else 1 for x in seq)


class _CountedRange:
    """A range whose iteration is charged to the render's budget, every time it is looped over."""

    def __init__(self, r: range):
        self._r = r

    def __iter__(self) -> Any:
        spent = _spent.get(None)
        for item in self._r:
            if spent is not None:
                spent[0] += 1
                if spent[0] > MAX_ITERATIONS:
                    raise TemplateLimit(f"loops over more than {MAX_ITERATIONS} items in all")
            yield item

    def __len__(self) -> int:
        return len(self._r)

    def __getitem__(self, index: Any) -> Any:
        item = self._r[index]
        return _CountedRange(item) if isinstance(item, range) else item

    def __contains__(self, item: Any) -> bool:
        return item in self._r

    def __repr__(self) -> str:
        return repr(self._r)


def _counted_range(*args: int) -> _CountedRange:
    return _CountedRange(safe_range(*args))


def _bounded_filter(fn: Any) -> Any:
    skip = 2 if getattr(fn, "jinja_pass_arg", None) else 1  # the context/environment, then the value

    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_numbers(args[skip:], kwargs)
        return fn(*args, **kwargs)
    return _like(bounded, fn)


def _checked_format(fn: Any) -> Any:
    def checked(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and (_WIDE_FORMAT.search(value) or _WIDE_BRACE.search(value)):
            raise TemplateLimit("a format field wider than a template may make")
        return fn(value, *args, **kwargs)
    return _like(checked, fn)


def _like(wrapper: Any, fn: Any) -> Any:
    for attr in ("jinja_pass_arg", "__name__", "__doc__"):  # jinja reads how to call it from the function
        if hasattr(fn, attr):
            setattr(wrapper, attr, getattr(fn, attr))
    return wrapper


def template_failure(exc: Exception) -> str:
    """One line for what went wrong while a template rendered. Whatever a template's own code
    raises (1 / 0, int('x'), a missing key, a loop over `self`) is the template's fault, not
    bakery's: named by its type, never an internal error."""
    text = (exc.message or type(exc).__name__) if isinstance(exc, jinja2.TemplateError) \
        else f"{type(exc).__name__}: {exc}"
    return " ".join(str(text).split())
