"""Render a conversation the way Ollama will at inference, from the model's TEMPLATE layer (a Go template).

It knows nothing of training templates; ``core.data.template_check`` compares the two. The rendering follows
Ollama's ``template.Execute``: system messages are collated into ``.System``, consecutive messages of
one role are merged, templates with ``.Messages`` see the whole list, and legacy
``.System/.Prompt/.Response`` templates are run turn by turn with the last one cut after
``.Response``. What the Go template uses that we cannot evaluate raises ``GoTemplateError``.
"""

from __future__ import annotations

from typing import Any

from llamaforge_tui.core.ollama.go_template import GoStruct, Node, cut_after_response, execute, identifiers, parse


def _message(m: dict[str, str]) -> GoStruct:
    return GoStruct("api.Message", Role=m["role"], Content=m["content"], Thinking="", Images=[], ToolCalls=[],
                    ToolName="")


def _collate(messages: list[dict[str, str]]) -> tuple[str, list[dict[str, str]]]:
    system = [m["content"] for m in messages if m["role"] == "system"]
    collated: list[dict[str, str]] = []
    for m in messages:
        if collated and collated[-1]["role"] == m["role"] and m["role"] != "tool":
            collated[-1] = {"role": m["role"], "content": collated[-1]["content"] + "\n\n" + m["content"]}
        else:
            collated.append(dict(m))
    return "\n\n".join(system), collated


def render_ollama(template: str, messages: list[dict[str, str]], *, system: str | None = None) -> str:
    """The prompt Ollama's /api/chat would build from ``messages`` (raises GoTemplateError)."""
    nodes = parse(template)
    names = identifiers(nodes)
    if "messages" not in names and "response" not in names:
        nodes = [*nodes, *parse("{{ .Response }}")]  # Ollama appends it to such templates
    if system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]  # the model's SYSTEM layer
    sys_text, collated = _collate(messages)
    base: dict[str, Any] = {"Think": False, "IsThinkSet": False}
    if "messages" in names or "document" in names:
        return execute(nodes, {**base, "System": sys_text, "Messages": [_message(m) for m in collated], "Tools": [],
                               "Response": "", "Query": "", "Document": "", "Instruction": ""})
    return _render_legacy(nodes, collated, base)


def _render_legacy(nodes: list[Node], messages: list[dict[str, str]], base: dict[str, Any]) -> str:
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        out.append(execute(nodes, {**base, **turn}))
        turn.update(System="", Prompt="", Response="")

    for m in messages:
        if m["role"] == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = m["content"]
        elif m["role"] == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = m["content"]
        elif m["role"] == "assistant":
            turn["Response"] = m["content"]
    out.append(execute(cut_after_response(nodes), {**base, **turn}))
    return "".join(out)
