"""Small jinja templates inside recipes: image names, step shell text and env values.

Sandboxed, strict and bounded (bakery/config/sandbox.py): an unknown name is an error naming the
field, never ''. Recipe variables are top-level names beside `recipe`, `build_id` and `timestamp`.
"""

from __future__ import annotations

import re
from functools import lru_cache

from bakery.errors import ConfigError

AMI_NAME_RE = re.compile(r"^[A-Za-z0-9()\[\] ./\-'@_]{3,128}$")
BUILTINS = ("recipe", "build_id", "timestamp")


@lru_cache(maxsize=1)
def _env():
    from bakery.config.sandbox import BoundedSandbox

    return BoundedSandbox()


def render_text(template: str, context: dict[str, str], where: str) -> str:
    if "{" not in template:
        return template  # the common case: skip importing jinja at all
    import jinja2

    from bakery.config.sandbox import template_failure

    try:
        env = _env()
        return env.render(env.from_string(template), context)
    except jinja2.UndefinedError as exc:
        known = ", ".join(sorted(context)) or "none"
        raise ConfigError(f"{where}: {exc.message} (known names: {known})") from None
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{where}: template syntax error on its line {exc.lineno}: {exc.message}") from None
    except RecursionError:
        raise ConfigError(f"{where}: template error: recursion too deep (a macro calling itself?)") from None
    except Exception as exc:  # noqa: BLE001 - whatever the template's code raised (sandbox.template_failure)
        raise ConfigError(f"{where}: template error: {template_failure(exc)}") from None


def image_name(template: str, context: dict[str, str], where: str) -> str:
    name = render_text(template, context, where)
    if not AMI_NAME_RE.match(name):
        raise ConfigError(f"{where}: renders to {name!r}, which is not a valid AMI name "
                          "(3-128 characters: letters, digits, ( ) [ ] . / - ' @ _ and space)")
    return name
