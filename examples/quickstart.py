"""flowtrace in one minute: decorate functions, nest them, let one fail, look at the trace.

    python examples/quickstart.py

Runs offline with no keys. With no endpoint configured, the logs also go to the embedded
store (.flowtrace/flowtrace.db), where `flowtrace logs` and `flowtrace ui` find them.
"""

from __future__ import annotations

from typing import Any

import flowtrace
from flowtrace import flow
from flowtrace.testing import capture_logs


@flow(path="quickstart/retrieve")
def retrieve(question: str, k: int = 2) -> list[str]:
    print(f"searching for {question!r}")
    documents = ["flowtrace records calls", "each call is a log", "logs nest into traces"]
    return documents[:k]


@flow(path="quickstart/check_policy")
def check_policy(answer: str) -> None:
    if "password" in answer:
        raise ValueError("the answer would leak a password")


@flow(path="quickstart/answer", attributes={"model": "echo-1", "temperature": 0})
def answer(question: str) -> dict[str, Any]:
    context = retrieve(question)
    reply = f"{question} -> {' / '.join(context)}"
    try:
        check_policy("my password is hunter2")
    except ValueError:
        print("policy check failed; answering anyway")
    return {"role": "assistant", "content": reply}


def print_tree(node: dict[str, Any], depth: int = 0) -> None:
    took = f"{node.get('provider_latency', 0) * 1000:.2f} ms"
    error = f"  ERROR {node['error']}" if "error" in node else ""
    print(f"{'    ' * depth}{node['path']}  [{took}]{error}")
    for line in node.get("stdout", "").splitlines():
        print(f"{'    ' * depth}  | {line}")
    for child in node["children"]:
        print_tree(child, depth + 1)


def main() -> None:
    with capture_logs() as captured:
        answer("what does flowtrace do?")
    print("\nThe trace:")
    for root in captured.trees():
        print_tree(root)
    flowtrace.flush(5.0)


if __name__ == "__main__":
    main()
