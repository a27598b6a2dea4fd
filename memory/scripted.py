"""A scripted chat model: plays back tool calls, so agents run with no LLM and no API key."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

_call_ids = itertools.count(1)


class ScriptedChatModel(GenericFakeChatModel):
    """`GenericFakeChatModel` that accepts tools (ignoring them) and answers from its script."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:
        return self


def tool_call(name: str, **args: Any) -> AIMessage:
    """One assistant turn calling tool `name` with `args`."""
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"call_{next(_call_ids)}"}])


def script(*turns: AIMessage | str) -> ScriptedChatModel:
    """A model that answers each model call with the next turn (a plain string ends the run)."""
    messages: Iterable[AIMessage] = (t if isinstance(t, AIMessage) else AIMessage(content=t) for t in turns)
    return ScriptedChatModel(messages=iter(list(messages)))
