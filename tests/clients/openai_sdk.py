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
if mock:
    import json, urllib.request
    seen = json.load(urllib.request.urlopen(f"{mock}/mock/requests"))[-1]
    assert seen["temperature"] == 0.25 and seen["top_p"] == 0.5, seen
    assert seen["max_tokens"] == 6 and seen["stop"] == ["END"] and seen["seed"] == 3, seen
    assert seen["messages"][0] == {"role": "system", "content": "Answer as a gardener."}, seen
try:
    client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}], n=2)
    sys.exit("n=2 must be refused")
except openai.BadRequestError as e:
    assert "n" in str(e), e

# Errors arrive as the SDK's exceptions.
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    sys.exit("an unknown model must fail")
except openai.NotFoundError as e:
    assert e.body["type"] == "not_found_error", e.body

print(f"openai SDK {openai.__version__}: models, whole answer, streamed answer ({len(pieces)} chunks), "
      f"sampling settings{' (seen upstream)' if mock else ''}, errors: ok")
