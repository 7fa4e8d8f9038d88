"""Parsing for the Go text/template subset (see ``go_template``): text, actions, trim markers, blocks.

Kept apart from evaluation so each half reads on its own; ``go_template`` re-exports ``parse``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from llamaforge_tui.core.errors import LlamaForgeError


class GoTemplateError(LlamaForgeError):
    """The template uses something this evaluator does not support, or fails as Go would."""


# Explicit nesting limits, far above any real template (a few levels), so that parsing, evaluation and the
# tree walks recurse a bounded number of times: blocks inside blocks, and parentheses inside parentheses.
MAX_BLOCK_DEPTH = 50
MAX_PAREN_DEPTH = 50
_INT64 = 1 << 63


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
            tokens.append(("lit", _number(text)))
        elif kind == "ident" and text in ("true", "false"):
            tokens.append(("lit", text == "true"))
        elif kind == "ident" and text == "nil":
            tokens.append(("lit", None))
        else:
            tokens.append((kind or "", text))
    return tokens


def _number(text: str) -> int | float:
    """A numeric literal; integers must fit Go's int64, as Go's parser requires."""
    if "." in text:
        return float(text)
    if len(text.lstrip("-")) > 19 or not -_INT64 <= (value := int(text)) < _INT64:
        raise GoTemplateError(f"number out of range: {text[:30]}{'…' if len(text) > 30 else ''}")
    return value


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
            if len(stack) >= MAX_PAREN_DEPTH:
                raise GoTemplateError(f"parentheses nested more than {MAX_PAREN_DEPTH} deep")
            stack.append(cmds)
            cmds = [[]]
        elif kind == "punct" and text == ")":
            if not stack:
                raise GoTemplateError("unbalanced ')'")
            if any(not c for c in cmds):
                raise GoTemplateError("missing value for command in '( )'")
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
            if len(stack) >= MAX_BLOCK_DEPTH:
                raise GoTemplateError(f"{{{{{head}}}}} blocks nested more than {MAX_BLOCK_DEPTH} deep")
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
        elif head in ("break", "continue"):
            # Only inside a range's body (blocks nested in it included), never in its {{else}}: as Go's parser.
            if not any(block.kind == "range" and block.else_body is None for block, _ in stack):
                raise GoTemplateError(f"{{{{{head}}}}} outside {{{{range}}}}")
            if len(tokens) > 1:
                raise GoTemplateError(f"unexpected {tokens[1][1]!r} in {{{{{head}}}}}")
            current.append(Node(head))
        elif head in ("define", "template", "block"):
            raise GoTemplateError(f"'{head}' actions are not supported")
        else:
            current.append(Node("action", pipe=_parse_pipe(tokens)))
    if stack:
        raise GoTemplateError(f"unclosed {{{{{stack[-1][0].kind}}}}}: missing {{{{end}}}}")
    return root
