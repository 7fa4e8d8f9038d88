"""A small evaluator for the subset of Go's text/template that Ollama's TEMPLATE layers use.

Ollama renders prompts with Go templates; training renders them with Jinja. To check that the two
agree we evaluate the Go side here: text, ``{{- -}}`` trimming, comments, ``if / else if / else``,
``range`` (with ``$i, $x :=``), ``with``, variables (``:=``, ``=``), fields (``.Role``, ``$.System``),
pipelines with ``|`` and parentheses, and the functions ``and or not eq ne lt le gt ge len index
slice print printf println json``. Anything else raises :class:`GoTemplateError`, so a caller can say
honestly that a template could not be evaluated instead of guessing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llamaforge_tui.core.errors import LlamaForgeError


class GoTemplateError(LlamaForgeError):
    """The template uses something this evaluator does not support, or fails as Go would."""


class GoStruct:
    """A Go struct value: unknown fields are an error (maps return nil instead)."""

    def __init__(self, type_name: str, **fields: Any) -> None:
        self.type_name = type_name
        self.fields = fields

    def get_field(self, name: str) -> Any:
        if name not in self.fields:
            raise GoTemplateError(f"can't evaluate field {name} in type {self.type_name}")
        return self.fields[name]


# ---------------------------------------------------------------------------------------------- parsing

@dataclass
class Pipe:
    decl: list[str]  # variable names declared/assigned by this pipeline
    assign: bool  # "=" rather than ":="
    cmds: list[list[Any]]  # each command: operand tokens (or nested Pipe for parentheses)


@dataclass
class Node:
    kind: str  # text | action | if | range | with
    text: str = ""
    pipe: Pipe | None = None
    branches: list[tuple[Pipe, list[Node]]] = field(default_factory=list)  # if/with: (cond, body)...
    else_body: list[Node] | None = None


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\]|\\.)')
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<declare>:=)
  | (?P<punct>[()|=,])
  | (?P<var>\$\w*(?:\.\w+)*)
  | (?P<field>(?:\.\w+)+|\.)
  | (?P<ident>[A-Za-z_]\w*)
""", re.VERBOSE)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "'": "'", "0": "\0", "a": "\a", "b": "\b",
            "f": "\f", "v": "\v"}


def _unquote(body: str) -> str:
    return re.sub(r"\\(u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|.)",
                  lambda m: chr(int(m.group(1)[1:], 16)) if m.group(1)[0] in "ux" and len(m.group(1)) > 1
                  else _ESCAPES.get(m.group(1), m.group(1)), body)


def _lex_action(src: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if m is None:
            raise GoTemplateError(f"unexpected {src[pos:pos + 10]!r} in action {{{{{src}}}}}")
        pos = m.end()
        kind = m.lastgroup
        text = m.group()
        if kind == "ws":
            continue
        if kind == "str":
            tokens.append(("lit", _unquote(text[1:-1])))
        elif kind == "raw":
            tokens.append(("lit", text[1:-1]))
        elif kind == "char":
            tokens.append(("lit", ord(_unquote(text[1:-1]))))
        elif kind == "num":
            tokens.append(("lit", float(text) if "." in text else int(text)))
        elif kind == "ident" and text in ("true", "false"):
            tokens.append(("lit", text == "true"))
        elif kind == "ident" and text == "nil":
            tokens.append(("lit", None))
        else:
            tokens.append((kind or "", text))
    return tokens


def _split_actions(src: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", body)] with Go's trim markers applied to the neighbouring text."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    while True:
        start = src.find("{{", pos)
        text = src[pos:] if start < 0 else src[pos:start]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if start < 0:
            out.append(("text", text))
            return out
        body_start = start + 2
        if src[body_start:body_start + 1] == "-" and src[body_start + 1:body_start + 2] in (" ", "\t", "\r", "\n"):
            text = text.rstrip(" \t\r\n")
            body_start += 1
        out.append(("text", text))
        end = _find_close(src, body_start)
        body = src[body_start:end]
        trim_next = False
        if body.endswith("-") and body[-2:-1] in (" ", "\t", "\r", "\n"):
            body, trim_next = body[:-1], True
        out.append(("action", body.strip()))
        pos = end + 2


def _find_close(src: str, pos: int) -> int:
    quote = None
    i = pos
    while i < len(src):
        ch = src[i]
        if quote:
            if ch == "\\" and quote != "`":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "\"`'":
            quote = ch
        elif src.startswith("}}", i):
            return i
        i += 1
    raise GoTemplateError("unclosed action: missing '}}'")


def _parse_pipe(tokens: list[tuple[str, Any]]) -> Pipe:
    decl: list[str] = []
    assign = False
    for i, (kind, text) in enumerate(tokens):
        if kind == "declare" or (kind == "punct" and text == "="):
            names = [t for k, t in tokens[:i] if k != "punct"]
            if not names or not all(isinstance(n, str) and n.startswith("$") for n in names):
                raise GoTemplateError("bad variable declaration")
            decl, assign, tokens = names, kind != "declare", tokens[i + 1:]
            break
        if kind not in ("var", "punct") or (kind == "punct" and text != ","):
            break
    cmds: list[list[Any]] = [[]]
    stack: list[list[list[Any]]] = []
    for kind, text in tokens:
        if kind == "punct" and text == "(":
            stack.append(cmds)
            cmds = [[]]
        elif kind == "punct" and text == ")":
            if not stack:
                raise GoTemplateError("unbalanced ')'")
            inner = Pipe([], False, cmds)
            cmds = stack.pop()
            cmds[-1].append(("pipe", inner))
        elif kind == "punct" and text == "|":
            cmds.append([])
        else:
            cmds[-1].append((kind, text))
    if stack:
        raise GoTemplateError("unbalanced '('")
    if any(not c for c in cmds):
        raise GoTemplateError("empty command in pipeline")
    return Pipe(decl, assign, cmds)


def parse(src: str) -> list[Node]:
    root: list[Node] = []
    stack: list[tuple[Node, list[Node]]] = []  # (block node, list currently being filled)
    current = root
    for kind, body in _split_actions(src):
        if kind == "text":
            if body:
                current.append(Node("text", text=body))
            continue
        if body.startswith("/*"):
            continue
        tokens = _lex_action(body)
        if not tokens:
            raise GoTemplateError("empty action {{}}")
        head = tokens[0][1] if tokens[0][0] == "ident" else None
        if head in ("if", "range", "with"):
            node = Node(head)
            if head == "range":
                node.pipe = _parse_pipe(tokens[1:])
            node.branches.append((_parse_pipe(tokens[1:]), []))
            current.append(node)
            stack.append((node, current))
            current = node.branches[-1][1]
        elif head == "else":
            if not stack or stack[-1][0].else_body is not None:
                raise GoTemplateError("unexpected {{else}}")
            node = stack[-1][0]
            rest = tokens[1:]
            if rest and rest[0][0] == "ident" and rest[0][1] in ("if", "with") and node.kind == rest[0][1]:
                node.branches.append((_parse_pipe(rest[1:]), []))
                current = node.branches[-1][1]
            elif rest:
                raise GoTemplateError(f"unsupported {{{{else {rest[0][1]}}}}}")
            else:
                node.else_body = []
                current = node.else_body
        elif head == "end":
            if not stack:
                raise GoTemplateError("unexpected {{end}}")
            _node, current = stack.pop()
        elif head in ("define", "template", "block", "break", "continue"):
            raise GoTemplateError(f"'{head}' actions are not supported")
        else:
            current.append(Node("action", pipe=_parse_pipe(tokens)))
    if stack:
        raise GoTemplateError(f"unclosed {{{{{stack[-1][0].kind}}}}}: missing {{{{end}}}}")
    return root


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
                return fn(*args)
            except TypeError as exc:
                raise GoTemplateError(f"wrong arguments for {name}: {exc}") from None
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
            if node.kind == "text":
                self.out.append(node.text)
            elif node.kind == "action":
                value = self.run_pipe(node.pipe, dot)  # type: ignore[arg-type]
                if not node.pipe.decl:  # type: ignore[union-attr]
                    self.out.append(go_str(value))
            elif node.kind in ("if", "with"):
                self.branch(node, dot)
            elif node.kind == "range":
                self.range(node, dot)

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
                self.nodes(body, item)
                self.scope.pop()
            if not items and node.else_body is not None:
                self.nodes(node.else_body, dot)
        finally:
            self.scope.pop()


def execute(nodes: list[Node], data: Any) -> str:
    ev = _Evaluator(data)
    try:
        ev.nodes(nodes, data)
    except RecursionError:  # pragma: no cover - pathological nesting
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
