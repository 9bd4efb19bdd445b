"""Quality smoke for the local model through confab (stdlib only; not part of CI: slow).

Uploads three short documents, asks ten questions whose answers are in them through the
OpenAI-compatible endpoint (RAG alias, streamed), and counts answers that contain the expected
fact *and* cite the right document. Also measures time to first token and tokens/s as a client
of confab sees them. Then asks for the weather in three cities with a `get_weather` tool the
client runs (llama-server's `--jinja` chat template), once with `tool_choice: auto` and once
with `required` (llama-server then constrains the output to a call with a grammar): does the
model call it with the city, and does its answer use the result sent back? The RAG questions
are asked with confab's `search_documents` tool offered; follow-up searches are counted. Usage: CONFAB_URL=http://127.0.0.1:8787 python3 tests/clients/llm_smoke.py
"""
import json
import os
import statistics
import time
import urllib.request

URL = os.environ.get("CONFAB_URL", "http://127.0.0.1:8787")
DOCS = {
    "Harbour ferry schedule": "The first ferry to Gull Island leaves the north pier at 06:40. "
    "The last ferry returns at 23:10. Bicycles cost 3 euros extra.",
    "Orchid care": "Orchids in the east greenhouse are watered with rain water every Tuesday morning. "
    "They are fertilised once a month with a diluted orchid feed. "
    "The greenhouse is kept above twelve degrees Celsius in winter.",
    "Larkspur database": "After a crash, Larkspur replays its write-ahead log from the last checkpoint. "
    "Checkpoints run every five minutes. Backups are copied to the Oslo data centre every night.",
}
QUESTIONS = [
    ("When does the first ferry to Gull Island leave?", ["06:40", "6:40"], "Harbour ferry schedule"),
    ("How much extra does a bicycle cost on the ferry?", ["3"], "Harbour ferry schedule"),
    ("At what time does the last ferry return?", ["23:10", "11:10"], "Harbour ferry schedule"),
    ("What kind of water do the orchids get?", ["rain"], "Orchid care"),
    ("How often are the orchids fertilised?", ["month"], "Orchid care"),
    ("Above what temperature is the greenhouse kept in winter?", ["twelve", "12"], "Orchid care"),
    ("What does Larkspur replay after a crash?", ["write-ahead", "log"], "Larkspur database"),
    ("How often do Larkspur checkpoints run?", ["five", "5 min"], "Larkspur database"),
    ("Where are Larkspur backups copied to?", ["Oslo"], "Larkspur database"),
    ("On which weekday are the orchids watered?", ["Tuesday"], "Orchid care"),
]


def post(path, body):
    req = urllib.request.Request(URL + path, json.dumps(body).encode(), {"content-type": "application/json"})
    return urllib.request.urlopen(req, timeout=300)


def ask(question):
    """Streams one answer; returns text, confab extension, usage, ttft and tokens/s."""
    t0 = time.monotonic()
    resp = post("/v1/chat/completions", {
        "model": "confab-rag", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": question}],
    })
    text, ext, usage, first, last = "", {}, {}, None, None
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data:") or line.endswith("[DONE]"):
            continue
        chunk = json.loads(line[5:])
        for c in chunk.get("choices", []):
            piece = c.get("delta", {}).get("content")
            if piece:
                first = first or time.monotonic()
                last = time.monotonic()
                text += piece
        ext = chunk.get("confab") or ext
        usage = chunk.get("usage") or usage
    ttft = (first - t0) if first else None
    tokens = usage.get("completion_tokens", 0)
    rate = (tokens - 1) / (last - first) if first and last and last > first and tokens > 1 else None
    return text, ext, ttft, rate, tokens


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                   "required": ["city"]}}}]
CITIES = ["Oslo", "Lisbon", "Nairobi"]


def tool_round_trip(city, tool_choice):
    """Asks through a chain with a tool the client runs; returns (called with the city?,
    answer uses the result?, seconds for the call, seconds for the answer)."""
    ask = [{"role": "user", "content": f"What is the weather in {city} right now?"}]
    t0 = time.monotonic()
    first = json.load(post("/v1/chat/completions", {
        "model": "default", "messages": ask, "tools": TOOLS, "tool_choice": tool_choice}))
    t1 = time.monotonic()
    choice = first["choices"][0]
    calls = choice["message"].get("tool_calls") or []
    called = (choice["finish_reason"] == "tool_calls" and calls
              and calls[0]["function"]["name"] == "get_weather"
              and city.lower() in calls[0]["function"]["arguments"].lower())
    if not called:
        return False, False, t1 - t0, 0.0, choice["message"]
    result = {"role": "tool", "tool_call_id": calls[0]["id"], "content": f"Sunny, 23 degrees Celsius in {city}."}
    second = json.load(post("/v1/chat/completions", {
        "model": "default", "tools": TOOLS, "messages": ask + [choice["message"], result]}))
    t2 = time.monotonic()
    answer = second["choices"][0]["message"].get("content") or ""
    used = "23" in answer or "sunny" in answer.lower()
    return True, used, t1 - t0, t2 - t1, answer


def tools_smoke(tool_choice):
    print(f"\n| tool_choice | city | called get_weather with it | answer uses the result | call s | answer s | answer |")
    print("|---|---|---|---|---|---|---|")
    called_n = used_n = 0
    for city in CITIES:
        called, used, call_s, answer_s, answer = tool_round_trip(city, tool_choice)
        called_n += bool(called)
        used_n += bool(used)
        print(f"| {tool_choice} | {city} | {'yes' if called else 'no'} | {'yes' if used else 'no'} | {call_s:.2f} "
              f"| {answer_s:.2f} | {str(answer).strip()[:80]!r} |")
    print(f"\ntool calls (tool_choice {tool_choice}): {called_n}/{len(CITIES)} questions answered with a "
          f"get_weather call naming the city; {used_n}/{len(CITIES)} answers use the tool's result")


def main():
    ids = {}
    for title, text in DOCS.items():
        doc = json.load(post("/v1/documents?wait=true", {"title": title, "text": text}))
        ids[title] = doc["id"]
    good, searched, ttfts, rates = 0, 0, [], []
    print("| # | question | answer | fact | cites the right document | TTFT s | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for i, (q, facts, title) in enumerate(QUESTIONS, 1):
        text, ext, ttft, rate, _ = ask(q)
        fact = any(f.lower() in text.lower() for f in facts)
        cited = {s["n"]: s["doc_id"] for s in ext.get("sources", [])}
        right = any(cited.get(n) == ids[title] for n in ext.get("citations", []))
        good += fact and right
        searched += any(t.get("name") == "search_documents" for t in ext.get("tools", []))
        if ttft is not None:
            ttfts.append(ttft)
        if rate is not None:
            rates.append(rate)
        print(f"| {i} | {q} | {text.strip()!r} | {'yes' if fact else 'no'} | {'yes' if right else 'no'} "
              f"| {ttft:.2f} | {rate:.1f} |" if ttft and rate else
              f"| {i} | {q} | {text.strip()!r} | {'yes' if fact else 'no'} | {'yes' if right else 'no'} | - | - |")
    print(f"\n{good}/{len(QUESTIONS)} answers contain the expected fact and cite its document; "
          f"TTFT median {statistics.median(ttfts):.2f} s (max {max(ttfts):.2f} s); "
          f"generation {statistics.mean(rates):.1f} tokens/s (mean over answers); "
          f"{searched}/{len(QUESTIONS)} answers made a follow-up search_documents call")
    tools_smoke("auto")
    tools_smoke("required")


if __name__ == "__main__":
    main()
