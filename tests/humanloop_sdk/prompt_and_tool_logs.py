"""Run by the Humanloop SDK 0.8.24 in its own venv (tests/test_humanloop_sdk.py): a flow log,
a prompt log and a tool log under it (`trace_parent_id`), a prompt log update, and reads.

Prints one JSON line with the ids and what the SDK parsed from the answers.
"""

import json
import sys

from humanloop import Humanloop
from humanloop.types.flow_log_response import FlowLogResponse
from humanloop.types.prompt_log_response import PromptLogResponse
from humanloop.types.tool_log_response import ToolLogResponse

BASE_URL, API_KEY = sys.argv[1], sys.argv[2]
client = Humanloop(api_key=API_KEY, base_url=BASE_URL)

trace = client.flows.log(
    path="sdk/trace",
    flow={"attributes": {}},
    trace_status="incomplete",
    inputs={"question": "weather?"},
)
prompt = client.prompts.log(
    path="sdk/forecaster",
    prompt={
        "model": "gpt-4o",
        "provider": "openai",
        "temperature": 0.3,
        "template": [{"role": "system", "content": "You forecast {{city}}."}],
    },
    messages=[{"role": "user", "content": "Weather in Paris?"}],
    output_message={"role": "assistant", "content": "Sunny."},
    prompt_tokens=12,
    output_tokens=3,
    prompt_cost=0.0001,
    output_cost=0.00005,
    finish_reason="stop",
    inputs={"city": "Paris"},
    trace_parent_id=trace.id,
)
tool = client.tools.log(
    path="sdk/lookup",
    tool={
        "function": {
            "name": "lookup",
            "description": "Look a city up",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    },
    inputs={"city": "Paris"},
    output="found",
    trace_parent_id=trace.id,
)
updated = client.prompts.update_log(
    id=prompt.prompt_id, log_id=prompt.id, output_tokens=4, metadata={"rated": "good"}
)
client.flows.update_log(log_id=trace.id, trace_status="complete", output="Sunny.")
fetched = client.logs.get(id=trace.id)
# 0.8.24's LogResponse is a union of unresolved forward references: `logs.get` gives a dict
# whatever the server answers. Which of the SDK's own models parse the answer, then:
record = fetched if isinstance(fetched, dict) else fetched.dict()


def parsed_as(data):
    for model in (PromptLogResponse, ToolLogResponse, FlowLogResponse):
        try:
            model.model_validate(data)
        except Exception:
            continue
        return model.__name__
    return None


print(
    json.dumps(
        {
            "trace": trace.id,
            "prompt": prompt.id,
            "prompt_id": prompt.prompt_id,
            "prompt_version": prompt.version_id,
            "tool": tool.id,
            "tool_id": tool.tool_id,
            "updated_type": parsed_as(updated if isinstance(updated, dict) else updated.dict()),
            "updated_output_tokens": (updated if isinstance(updated, dict) else updated.dict()).get(
                "output_tokens"
            ),
            "fetched_type": parsed_as(record),
            "children": [parsed_as(child) for child in record.get("trace_children") or []],
        }
    ),
    flush=True,
)
