"""A small evaluator for the subset of Go's text/template that Ollama's TEMPLATE layers use.

Ollama renders prompts with Go templates; training renders them with Jinja. To check that the two
agree we evaluate the Go side here: text, ``{{- -}}`` trimming, comments, ``if / else if / else``,
``range`` (with ``$i, $x :=``, ``break``, ``continue``), ``with``, variables (``:=``, ``=``), fields (``.Role``, ``$.System``),
pipelines with ``|`` and parentheses, and the functions ``and or not eq ne lt le gt ge len index
slice print printf println json``. Anything else raises :class:`GoTemplateError`, so a caller can say
honestly that a template could not be evaluated instead of guessing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from llamaforge_tui.core.ollama.go_template_parse import GoTemplateError, Node, Pipe, parse

# Evaluation budgets: a template is data from a model, and ``range 1000000000`` or a string doubled in a
# loop must end in an error, not a hang or a runaway allocation. Real prompts are far below these.
MAX_STEPS = 200_000  # nodes and commands evaluated (a 100-message chat takes a few thousand)
MAX_OUTPUT_CHARS = 16 * 1024 * 1024  # rendered text, and any one string built by print/printf

__all__ = ["GoStruct", "GoTemplateError", "Node", "Pipe", "cut_after_response", "execute", "identifiers", "parse"]


class GoStruct:
    """A Go struct value: unknown fields are an error (maps return nil instead)."""

    def __init__(self, type_name: str, **fields: Any) -> None:
        self.type_name = type_name
        self.fields = fields

    def get_field(self, name: str) -> Any:
        if name not in self.fields:
            raise GoTemplateError(f"can't evaluate field {name} in type {self.type_name}")
        return self.fields[name]


# ---------------------------------------------------------------------------------------------- evaluation

def truth(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return bool(value)
    return True


def go_str(value: Any) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_str(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_str(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, GoStruct):
        return "{" + " ".join(go_str(v) for v in value.fields.values()) + "}"
    return str(value)


def _go_json(value: Any) -> str:
    def plain(v: Any) -> Any:
        if isinstance(v, GoStruct):
            return {k: plain(x) for k, x in v.fields.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    text = json.dumps(plain(value), separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _printf(fmt: str, *args: Any) -> str:
    it = iter(args)

    def sub(m: re.Match[str]) -> str:
        if m.group() == "%%":
            return "%"
        value = next(it, None)
        return json.dumps(value) if m.group()[-1] == "q" else go_str(value)

    return re.sub(r"%%|%[-+# 0-9.]*[vsdqf]", sub, fmt)


def _cmp(op: Callable[[Any, Any], bool]) -> Callable[..., bool]:
    def f(a: Any, b: Any) -> bool:
        try:
            return op(a, b)
        except TypeError:
            raise GoTemplateError(f"incompatible types for comparison: {type(a).__name__}, {type(b).__name__}") from None
    return f


def _len(x: Any) -> int:
    if x is None:
        raise GoTemplateError("len of nil")
    if isinstance(x, GoStruct):
        raise GoTemplateError(f"len of type {x.type_name}")
    return len(x)


def _index(x: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(x, dict):
            x = x.get(k)
        elif isinstance(x, (list, tuple, str)) and isinstance(k, int):
            if not 0 <= k < len(x):
                raise GoTemplateError(f"index out of range: {k}")
            x = x[k]
        else:
            raise GoTemplateError(f"can't index item of type {type(x).__name__}")
    return x


def _slice(x: Any, *idx: int) -> Any:
    if not isinstance(x, (list, tuple, str)):
        raise GoTemplateError(f"can't slice item of type {type(x).__name__}")
    if len(idx) > 2:
        raise GoTemplateError("3-index slice is not supported")
    start = idx[0] if idx else 0
    stop = idx[1] if len(idx) > 1 else len(x)
    if not 0 <= start <= stop <= len(x):
        raise GoTemplateError(f"slice bounds out of range [{start}:{stop}]")
    return x[start:stop]


FUNCS: dict[str, Callable[..., Any]] = {
    "not": lambda x: not truth(x),
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "lt": _cmp(lambda a, b: a < b), "le": _cmp(lambda a, b: a <= b),
    "gt": _cmp(lambda a, b: a > b), "ge": _cmp(lambda a, b: a >= b),
    "len": _len, "index": _index, "slice": _slice,
    "print": lambda *a: "".join(go_str(x) if isinstance(x, str) or i == 0 or isinstance(a[i - 1], str)
                                else " " + go_str(x) for i, x in enumerate(a)),
    "println": lambda *a: " ".join(go_str(x) for x in a) + "\n",
    "printf": _printf,
    "json": _go_json,
}


class _LoopControl(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class _Scope:
    def __init__(self, root: Any) -> None:
        self.frames: list[dict[str, Any]] = [{"$": root}]

    def push(self) -> None:
        self.frames.append({})

    def pop(self) -> None:
        self.frames.pop()

    def get(self, name: str) -> Any:
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise GoTemplateError(f"undefined variable: {name}")

    def declare(self, name: str, value: Any) -> None:
        self.frames[-1][name] = value

    def assign(self, name: str, value: Any) -> None:
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        raise GoTemplateError(f"undefined variable: {name}")


def _field(value: Any, name: str) -> Any:
    if isinstance(value, GoStruct):
        return value.get_field(name)
    if isinstance(value, dict):
        return value.get(name)  # missingkey=zero, as Ollama parses its templates
    if value is None:
        raise GoTemplateError(f"nil pointer evaluating .{name}")
    raise GoTemplateError(f"can't evaluate field {name} in type {type(value).__name__}")


class _Evaluator:
    def __init__(self, root: Any) -> None:
        self.scope = _Scope(root)
        self.out: list[str] = []
        self.steps = 0
        self.out_chars = 0

    def step(self, n: int = 1) -> None:
        self.steps += n
        if self.steps > MAX_STEPS:
            raise GoTemplateError(f"template evaluation takes more than {MAX_STEPS:,} steps")

    def emit(self, text: str) -> None:
        self.out_chars += len(text)
        if self.out_chars > MAX_OUTPUT_CHARS:
            raise GoTemplateError(f"template output is longer than {MAX_OUTPUT_CHARS:,} characters")
        self.out.append(text)

    def operand(self, tok: tuple[str, Any], dot: Any) -> Any:
        kind, text = tok
        if kind == "lit":
            return text
        if kind == "pipe":
            return self.pipe(text, dot)
        if kind == "field":
            value = dot
            for name in text.split(".")[1:]:
                if name:
                    value = _field(value, name)
            return value
        if kind == "var":
            name, *names = text.split(".")
            value = self.scope.get(name)
            for n in names:
                value = _field(value, n)
            return value
        if kind == "ident":
            raise GoTemplateError(f"function {text!r} is not supported")  # reached only as an argument
        raise GoTemplateError(f"unexpected {text!r}")

    def command(self, cmd: list[Any], dot: Any, piped: tuple[Any] | tuple[()] = ()) -> Any:
        self.step()
        if not cmd:
            raise GoTemplateError("missing value for command")
        head = cmd[0]
        if head[0] == "ident":
            name = head[1]
            if name in ("and", "or"):  # short-circuit, returning the deciding value, as Go does
                value: Any = None
                for tok in [*cmd[1:], *(("lit", p) for p in piped)]:
                    value = self.operand(tok, dot)
                    if truth(value) != (name == "and"):
                        return value
                return value
            fn = FUNCS.get(name)
            if fn is None:
                raise GoTemplateError(f"function {name!r} is not supported")
            args = [self.operand(t, dot) for t in cmd[1:]] + list(piped)
            try:
                result = fn(*args)
            except (TypeError, ValueError) as exc:
                raise GoTemplateError(f"wrong arguments for {name}: {exc}") from None
            if isinstance(result, str) and len(result) > MAX_OUTPUT_CHARS:
                raise GoTemplateError(f"{name} built a string longer than {MAX_OUTPUT_CHARS:,} characters")
            return result
        if len(cmd) > 1 or piped:
            raise GoTemplateError(f"can't give arguments to non-function {head[1]!r}")
        return self.operand(head, dot)

    def pipe(self, pipe: Pipe, dot: Any) -> Any:
        value: Any = None
        for i, cmd in enumerate(pipe.cmds):
            value = self.command(cmd, dot, (value,) if i else ())
        return value

    def run_pipe(self, pipe: Pipe, dot: Any) -> Any:
        value = self.pipe(pipe, dot)
        for name in pipe.decl:
            (self.scope.assign if pipe.assign else self.scope.declare)(name, value)
        return value

    def nodes(self, nodes: list[Node], dot: Any) -> None:
        for node in nodes:
            self.step()
            if node.kind == "text":
                self.emit(node.text)
            elif node.kind == "action":
                value = self.run_pipe(node.pipe, dot)  # type: ignore[arg-type]
                if not node.pipe.decl:  # type: ignore[union-attr]
                    self.emit(go_str(value))
            elif node.kind in ("if", "with"):
                self.branch(node, dot)
            elif node.kind == "range":
                self.range(node, dot)
            elif node.kind in ("break", "continue"):
                raise _LoopControl(node.kind)

    def branch(self, node: Node, dot: Any) -> None:
        self.scope.push()
        try:
            for cond, body in node.branches:
                value = self.run_pipe(cond, dot)
                if truth(value):
                    self.nodes(body, value if node.kind == "with" else dot)
                    return
            if node.else_body is not None:
                self.nodes(node.else_body, dot)
        finally:
            self.scope.pop()

    def range(self, node: Node, dot: Any) -> None:
        pipe, body = node.branches[0]
        self.scope.push()
        try:
            value = self.pipe(pipe, dot)
            if isinstance(value, dict):
                items = [(k, value[k]) for k in sorted(value)]
            elif isinstance(value, (list, tuple)):
                items = list(enumerate(value))
            elif isinstance(value, int) and not isinstance(value, bool):
                if value > MAX_STEPS:
                    raise GoTemplateError(f"range over {value:,}: more than {MAX_STEPS:,} iterations")
                items = [(i, i) for i in range(value)]
            elif value is None:
                items = []
            else:
                raise GoTemplateError(f"range can't iterate over {type(value).__name__}")
            for key, item in items:
                self.scope.push()
                if len(pipe.decl) == 1:
                    self.scope.declare(pipe.decl[0], item)
                elif len(pipe.decl) == 2:
                    self.scope.declare(pipe.decl[0], key)
                    self.scope.declare(pipe.decl[1], item)
                try:
                    self.nodes(body, item)
                except _LoopControl as ctl:
                    if ctl.kind == "break":
                        break
                finally:
                    self.scope.pop()
            if not items and node.else_body is not None:
                self.nodes(node.else_body, dot)
        finally:
            self.scope.pop()


def execute(nodes: list[Node], data: Any) -> str:
    ev = _Evaluator(data)
    try:
        ev.nodes(nodes, data)
    except _LoopControl as ctl:  # parse() refuses this; a hand-built tree might not
        raise GoTemplateError(f"{{{{{ctl.kind}}}}} outside {{{{range}}}}") from None
    except RecursionError:  # pragma: no cover - parse() bounds the nesting
        raise GoTemplateError("template nests too deeply") from None
    return "".join(ev.out)


def identifiers(nodes: list[Node]) -> set[str]:
    """Lower-cased field and variable names used anywhere (Ollama's ``Template.Vars``)."""
    names: set[str] = set()

    def pipe(p: Pipe | None) -> None:
        if p is None:
            return
        for cmd in p.cmds:
            for kind, text in cmd:
                if kind == "pipe":
                    pipe(text)
                elif kind in ("field", "var"):
                    names.update(part.lower() for part in text.split(".") if part)

    def walk(ns: list[Node]) -> None:
        for n in ns:
            pipe(n.pipe)
            for cond, body in n.branches:
                pipe(cond)
                walk(body)
            if n.else_body:
                walk(n.else_body)

    walk(nodes)
    return names


def cut_after_response(nodes: list[Node]) -> list[Node]:
    """Drop everything after the first ``.Response`` field, as Ollama does for the last legacy turn."""
    state = {"cut": False}

    def uses_response(p: Pipe | None) -> bool:
        return p is not None and any(kind == "field" and "Response" in text.split(".") for cmd in p.cmds
                                     for kind, text in cmd)

    def walk(ns: list[Node]) -> list[Node]:
        kept: list[Node] = []
        for n in ns:
            if state["cut"]:
                break
            if n.kind in ("text", "action"):
                kept.append(n)
                if uses_response(n.pipe):
                    state["cut"] = True
                continue
            copy = Node(n.kind, pipe=n.pipe)
            copy.branches = [(cond, walk(body)) for cond, body in n.branches]
            copy.else_body = walk(n.else_body) if n.else_body is not None else None
            kept.append(copy)
        return kept

    return walk(nodes)
