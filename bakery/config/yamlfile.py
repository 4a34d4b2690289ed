"""Load YAML config files into typed models, with errors that name file:line and field.

Shared by recipes and environments. YAML is parsed with the safe loader into a node
tree that we convert ourselves, so that every value keeps its line number and so that
alias bombs, duplicate keys and oversized files are refused before any model sees them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from bakery.errors import ConfigError

MAX_FILE_BYTES = 256 * 1024
MAX_NODES = 20_000  # after alias expansion: a billion-laughs document blows past this at once
MAX_DEPTH = 64  # nesting: a recipe needs about 6; thousands of brackets would exhaust the stack

M = TypeVar("M", bound=BaseModel)
Path_ = tuple[str | int, ...]


class LineMap:
    """Maps a value's path inside the document (('steps', 2, 'timeout')) to its line."""

    def __init__(self) -> None:
        self._lines: dict[Path_, int] = {}

    def record(self, path: Path_, line: int) -> None:
        self._lines.setdefault(path, line)

    def line_for(self, path: Path_) -> int | None:
        # Fall back to the nearest enclosing value: a missing field is reported at its parent.
        while True:
            if path in self._lines:
                return self._lines[path]
            if not path:
                return None
            path = path[:-1]


def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class TooDeep(yaml.MarkedYAMLError):
    pass


class BoundedLoader(yaml.SafeLoader):
    """The safe loader with a nesting limit while composing (PyYAML's composer recurses)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise TooDeep(problem=f"nested more than {MAX_DEPTH} levels deep",
                              problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _convert(node: yaml.Node, path: Path_, lines: LineMap, where: str, budget: list[int],
             inside: tuple[int, ...] = ()) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(f"{where}:{node.start_mark.line + 1}: document expands to more than "
                          f"{MAX_NODES} values (alias bomb?)")
    if id(node) in inside:  # `a: &a [*a]`: composing made a node that contains itself
        raise ConfigError(f"{where}:{node.start_mark.line + 1}: an alias refers to a value that contains it")
    inside = inside + (id(node),)
    lines.record(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConfigError(f"{where}:{key_node.start_mark.line + 1}: YAML merge keys (<<) are not supported")
            key = _convert(key_node, path, LineMap(), where, budget, inside)
            if not isinstance(key, (str, int)):
                raise ConfigError(f"{where}:{key_node.start_mark.line + 1}: mapping keys must be strings")
            key = str(key)
            if key in out:
                raise ConfigError(f"{where}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
            out[key] = _convert(value_node, path + (key,), lines, where, budget, inside)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, path + (i,), lines, where, budget, inside) for i, item in enumerate(node.value)]
    constructor = yaml.SafeLoader("")
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}:{node.start_mark.line + 1}: {exc.problem or exc}") from None
    except ValueError as exc:  # a date-shaped scalar that is no date (2027-02-30): the constructor's own error
        raise ConfigError(f"{where}:{node.start_mark.line + 1}: {node.value!r} is not a valid date: {exc}") from None


def yaml_problem(exc: yaml.YAMLError, text: str) -> tuple[str, str]:
    """(":LINE" or "", the problem in one line) of a YAML error: PyYAML's own text spans lines."""
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow, e.g. a control character
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        return f":{text.count(chr(10), 0, exc.position) + 1}", f"character {char!r} is not allowed in YAML"
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        return (f":{mark.line + 1}" if mark else ""), " ".join(str(exc.problem or exc.context).split())
    return "", " ".join(str(exc).split())


def load_yaml(path: Path, display: str | None = None) -> tuple[Any, LineMap]:
    """Parse one YAML document; returns the data and its line map."""
    where = display or str(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"{where}: file is {size} bytes, more than the {MAX_FILE_BYTES}-byte limit for config files")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    try:
        node = yaml.compose(text, Loader=BoundedLoader)
    except yaml.YAMLError as exc:
        line, problem = yaml_problem(exc, text)
        raise ConfigError(f"{where}{line}: invalid YAML: {problem}") from None
    lines = LineMap()
    if node is None:
        return {}, lines
    return _convert(node, (), lines, where, [MAX_NODES]), lines


def validate(model: type[M], data: Any, lines: LineMap, where: str, context: dict | None = None) -> M:
    """Build a model; the first validation error becomes `file:line: field: problem`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}:1: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, lines, where)) from None


class FieldError(ValueError):
    """A problem a model-wide check finds at one field: `path` (from the model, e.g. ('tiers',
    'app', 'interfaces', 1)) names it, and its line, instead of the model's top level."""

    def __init__(self, path: Path_, message: str):
        super().__init__(message)
        self.path = path


def describe_validation_error(exc: ValidationError, lines: LineMap, where: str) -> str:
    err = exc.errors(include_url=False)[0]
    loc: Path_ = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        loc = loc + cause.path
    line = lines.line_for(loc)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required field is missing"
    msg = msg.removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{where}{f':{line}' if line else ''}: {format_path(loc)}: {msg}{suffix}"
