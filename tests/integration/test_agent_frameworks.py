"""Agent frameworks against the gateway's simulated nodes: LangChain's structured output
(`method="json_schema"`) and a tool-calling loop, through langchain-openai (Chat Completions
and the Responses API) and langchain-ollama, on both node kinds."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

pytestmark = pytest.mark.integration


class Person(BaseModel):
    """A person the text names."""

    name: str
    age: int = Field(ge=0, le=150)
    nicknames: list[str]
    employed: bool | None = None


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def chat_models(url: str) -> list:
    return [
        ChatOllama(base_url=url, model="llama3.2"),
        ChatOpenAI(base_url=url + "/v1", api_key="unused", model="llama3.2", max_retries=0),
        ChatOpenAI(base_url=url + "/v1", api_key="unused", model="tiny-llama", max_retries=0),
        ChatOpenAI(base_url=url + "/v1", api_key="unused", model="tiny-llama", max_retries=0, use_responses_api=True),
    ]


IDS = ["ollama-llama3.2", "openai-llama3.2", "openai-tiny-llama", "responses-tiny-llama"]


@pytest.mark.parametrize("which", range(4), ids=IDS)
def test_structured_output_json_schema(gateway, which):
    llm = chat_models(gateway.url)[which]
    person = llm.with_structured_output(Person, method="json_schema").invoke("Ann, 31, called Annie, works.")
    assert isinstance(person, Person) and person.nicknames


@pytest.mark.parametrize("which", range(4), ids=IDS)
def test_tool_calling_loop(gateway, which):
    llm = chat_models(gateway.url)[which].bind_tools([get_weather])
    messages = [HumanMessage("What is the weather in Rome?")]
    for _ in range(3):  # a loop that ends when the model answers in words
        reply = llm.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            break
        for call in reply.tool_calls:
            assert call["name"] == "get_weather" and set(call["args"]) == {"city"}
            messages.append(ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]))
    kinds = [type(m).__name__ for m in messages]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"], kinds
    assert messages[-1].text and not messages[-1].tool_calls
