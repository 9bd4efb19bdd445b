"""The official `openai` Python SDK against confab's OpenAI-compatible endpoint.

Run by scripts/check-clients.sh with CONFAB_URL pointing at a server whose default chain
answers "Orchids are watered every Tuesday morning [1]." and which holds greenhouse.md.
"""
import os
import sys

import openai

url = os.environ["CONFAB_URL"]
client = openai.OpenAI(base_url=f"{url}/v1", api_key=os.environ.get("CONFAB_API_KEY", "dev-mode"))

models = [m.id for m in client.models.list()]
assert "confab-rag" in models and "default" in models, models

# Whole answer through the RAG alias: sources and citations in the extension field.
resp = client.chat.completions.create(
    model="confab-rag",
    messages=[{"role": "user", "content": "How often are the orchids watered?"}],
)
text = resp.choices[0].message.content
assert "Tuesday" in text, text
assert resp.choices[0].finish_reason == "stop"
assert resp.usage.total_tokens > 0
ext = resp.model_extra["confab"]
assert ext["sources"] and "rain water" in ext["sources"][0]["snippet"], ext
assert ext["citations"] == [1], ext

# Streaming, with usage in a last chunk.
pieces, usage, finish = [], None, None
stream = client.chat.completions.create(
    model="confab-rag",
    messages=[{"role": "user", "content": "When are the orchids watered?"}],
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
assert "".join(pieces) == text, pieces
assert len(pieces) > 3, "streamed in pieces"
assert finish == "stop" and usage and usage.completion_tokens > 0

# Sampling settings reach the upstream: the mock lists what it received.
mock = os.environ.get("MOCK_URL")
resp = client.chat.completions.create(
    model="default",
    messages=[{"role": "system", "content": "Answer as a gardener."},
              {"role": "user", "content": "Which day are the orchids watered?"}],
    temperature=0.25, top_p=0.5, max_tokens=6, stop=["END"], seed=3,
)
assert resp.choices[0].message.content, resp
import json, urllib.request
if mock:
    seen = json.load(urllib.request.urlopen(f"{mock}/mock/requests"))[-1]
    assert seen["temperature"] == 0.25 and seen["top_p"] == 0.5, seen
    assert seen["max_tokens"] == 6 and seen["stop"] == ["END"] and seen["seed"] == 3, seen
    assert seen["messages"][0] == {"role": "system", "content": "Answer as a gardener."}, seen
try:
    client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}], n=2)
    sys.exit("n=2 must be refused")
except openai.BadRequestError as e:
    assert "n" in str(e), e

# Client tools round-trip: tools -> tool_calls -> tool message -> answer, whole and streamed.
tools = [{"type": "function", "function": {
    "name": "get_watering_day", "description": "The day a plant is watered",
    "parameters": {"type": "object", "properties": {"plant": {"type": "string"}}, "required": ["plant"]}}}]
tool_rounds = 0
if mock:
    def script(*behaviours):
        req = urllib.request.Request(f"{mock}/mock/script", data=json.dumps(list(behaviours)).encode(),
                                     headers={"content-type": "application/json"})
        urllib.request.urlopen(req).read()

    ask = {"role": "user", "content": "Which day are the orchids watered?"}
    for streamed in (False, True):
        script({"tool_calls": [{"name": "get_watering_day", "arguments": '{"plant": "orchid"}'}]})
        if streamed:
            calls, finish = {}, None
            for chunk in client.chat.completions.create(model="default", messages=[ask], tools=tools,
                                                        temperature=0.1, stream=True):
                for c in chunk.choices:
                    for piece in c.delta.tool_calls or []:
                        call = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
                        call["id"] = piece.id or call["id"]
                        call["name"] += (piece.function and piece.function.name) or ""
                        call["arguments"] += (piece.function and piece.function.arguments) or ""
                    finish = c.finish_reason or finish
            assert finish == "tool_calls" and len(calls) == 1, (finish, calls)
            call = calls[0]
            assistant = {"role": "assistant", "content": None, "tool_calls": [{
                "id": call["id"], "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]}}]}
        else:
            resp = client.chat.completions.create(model="default", messages=[ask], tools=tools,
                                                  tool_choice="required", temperature=0.1)
            choice = resp.choices[0]
            assert choice.finish_reason == "tool_calls", choice
            tc = choice.message.tool_calls[0]
            call = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}
            assistant = choice.message.model_dump(exclude_none=True)
        assert call["name"] == "get_watering_day" and json.loads(call["arguments"]) == {"plant": "orchid"}, call
        seen = json.load(urllib.request.urlopen(f"{mock}/mock/requests"))[-1]
        assert seen["tools"][0]["function"]["name"] == "get_watering_day" and seen["temperature"] == 0.1, seen
        answer = client.chat.completions.create(model="default", tools=tools, messages=[
            ask, assistant, {"role": "tool", "tool_call_id": call["id"], "content": "Tuesday"}])
        assert "Tuesday" in answer.choices[0].message.content, answer
        seen = json.load(urllib.request.urlopen(f"{mock}/mock/requests"))[-1]
        assert seen["messages"][-1] == {"role": "tool", "content": "Tuesday", "tool_call_id": call["id"]}, seen
        assert seen["messages"][-2]["tool_calls"][0]["id"] == call["id"], seen
        tool_rounds += 1

# Errors arrive as the SDK's exceptions.
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    sys.exit("an unknown model must fail")
except openai.NotFoundError as e:
    assert e.body["type"] == "not_found_error", e.body

print(f"openai SDK {openai.__version__}: models, whole answer, streamed answer ({len(pieces)} chunks), "
      f"sampling settings{' (seen upstream)' if mock else ''}, "
      f"tool calls round-tripped ({tool_rounds} of 2: whole, streamed), errors: ok")
