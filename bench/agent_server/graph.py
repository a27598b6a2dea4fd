"""A trivial graph: `langgraph dev` serves a graph, and the bench only needs its Store API."""

from __future__ import annotations

from typing import TypedDict

from langgraph.graph import END, START, StateGraph


class State(TypedDict):
    n: int


def step(state: State) -> State:
    return {"n": state.get("n", 0) + 1}


builder = StateGraph(State)
builder.add_node("step", step)
builder.add_edge(START, "step")
builder.add_edge("step", END)
graph = builder.compile()
