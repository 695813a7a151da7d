"""The OpenAI-compatible judge client (mipo.evaluate.judge_server) against a local HTTP server
started by each test: ratings, strict parsing, retries, timeouts, refusals, a server that is down,
and a full `mipo eval --judge-url`. The client under test is real; the server is a small stand-in
for a judge model's answers (the real `vllm serve` runs in tests/test_vllm.py)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mipo.errors import ConfigError, JudgeServerError
from mipo.evaluate.judge_server import ServerJudge, parse_strict, split_preferences

Answer = Callable[[dict, int], tuple[int, dict | str, dict[str, str]]]


class _Server:
    def __init__(self, answer: Answer) -> None:
        self.requests: list[tuple[dict, dict[str, str]]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append((body, dict(self.headers)))
                    count = len(outer.requests)
                status, payload, headers = answer(body, count)
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], _Server]]:
    servers: list[_Server] = []

    def start(answer: Answer) -> _Server:
        servers.append(_Server(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def completion(text: str) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": text}}]}


def rating_from_statement(body: dict, _: int) -> tuple[int, dict, dict[str, str]]:
    """Rates 5 when the response mentions the statement's last word, else 2."""
    user = body["messages"][-1]["content"]
    statement = user.split("User statement:\n", 1)[1].split("\n", 1)[0]
    response = user.split("Response:\n", 1)[1].split("\n\nRating", 1)[0]
    word = statement.rstrip(".!?").split()[-1].lower()
    return 200, completion("5" if word in response.lower() else "2"), {}


CONTEXTS = ["I am vegan. I cook for four.", "I hate running!", ""]
QUESTIONS = ["Dinner ideas?", "How do I get fit?", "Hi?"]
RESPONSES = ["A vegan curry that serves four.", "Try swimming.", "Hello."]


def test_parsing_and_preferences() -> None:
    assert [parse_strict(t) for t in ("3", " 4\n", "5.", "Rating: 2", "score - 1")] == [
        3,
        4,
        5,
        2,
        1,
    ]
    for garbage in ("", "great", "4 or 5", "10", "0", "6", "4/5", "I rate it 4", None):
        assert parse_strict(garbage) is None, garbage
    assert split_preferences("I am vegan. I cook for four!\nNo nuts") == [
        "I am vegan.", "I cook for four!", "No nuts"
    ]  # fmt: skip
    assert split_preferences("") == [] and split_preferences("...") == []


def test_ratings_are_averaged_over_each_stated_preference(
    serve: Callable[[Answer], _Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIPO_JUDGE_API_KEY", "sk-secret-123")
    server = serve(rating_from_statement)
    judge = ServerJudge(server.url, "judge-model", concurrency=3)
    scores = judge.score(CONTEXTS, QUESTIONS, RESPONSES)
    # Row 0: "vegan" and "four" both mentioned -> 5, 5; row 1: "running!" not mentioned -> 2;
    # row 2 has no context: rated once against "(none stated)" ("stated)" not in "Hello.") -> 2.
    assert scores["ratings"].to_list() == [[5, 5], [2], [2]]
    assert scores["score"].to_list() == [5.0, 2.0, 2.0]
    assert scores["preferences"].to_list() == [2, 1, 1] and scores["unparsed"].sum() == 0
    assert len(server.requests) == 4 == judge.calls
    body, headers = server.requests[0]
    assert body["model"] == "judge-model" and body["temperature"] == 0
    assert headers["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in json.dumps(judge.describe())


def test_unparseable_answers_are_counted_never_scored(serve: Callable[[Answer], _Server]) -> None:
    replies = iter(["4", "I love it", "5", "ten"])
    lock = threading.Lock()

    def answer(body: dict, _: int) -> tuple[int, dict, dict[str, str]]:
        with lock:
            return 200, completion(next(replies)), {}

    server = serve(answer)
    scores = ServerJudge(server.url, "m", concurrency=1).score(CONTEXTS, QUESTIONS, RESPONSES)
    assert scores["unparsed"].to_list() == [1, 0, 1]
    assert scores["ratings"].to_list() == [[4], [5], []]
    assert scores["score"].to_list() == [4.0, 5.0, None]


def test_overloaded_server_is_retried_with_backoff(serve: Callable[[Answer], _Server]) -> None:
    def answer(body: dict, count: int) -> tuple[int, dict | str, dict[str, str]]:
        if count == 1:
            return 429, {"error": "slow down"}, {"Retry-After": "0"}
        if count == 2:
            return 503, "busy", {}
        return 200, completion("3"), {}

    server = serve(answer)
    judge = ServerJudge(server.url, "m", concurrency=1, backoff_s=0.01)
    scores = judge.score(["I am vegan."], ["Dinner?"], ["Soup."])
    assert scores["score"].to_list() == [3.0] and judge.calls == 3


def test_slow_answers_hit_the_timeout_then_fail_clearly(serve: Callable[[Answer], _Server]) -> None:
    def answer(body: dict, _: int) -> tuple[int, dict, dict[str, str]]:
        time.sleep(1.0)
        return 200, completion("3"), {}

    server = serve(answer)
    judge = ServerJudge(server.url, "m", timeout_s=0.2, retries=1, backoff_s=0.01)
    started = time.perf_counter()
    with pytest.raises(JudgeServerError, match=r"failed 2 times \(last: no answer within 0.2 s\)"):
        judge.score(["I am vegan."], ["Dinner?"], ["Soup."])
    assert time.perf_counter() - started < 3.0
    assert judge.calls == 2


def test_refusals_and_a_server_that_is_down(serve: Callable[[Answer], _Server]) -> None:
    server = serve(lambda body, _: (404, {"error": "model 'm' does not exist"}, {}))
    with pytest.raises(JudgeServerError, match=r"refused the request \(HTTP 404: .*does not exist"):
        ServerJudge(server.url, "m").score(["I am vegan."], ["Dinner?"], ["Soup."])
    not_json = serve(lambda body, _: (200, "<html>hello</html>", {}))
    with pytest.raises(JudgeServerError, match="not an OpenAI chat completion"):
        ServerJudge(not_json.url, "m").score(["I am vegan."], ["Dinner?"], ["Soup."])
    with socket.socket() as s:  # a free port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    started = time.perf_counter()
    with pytest.raises(JudgeServerError, match=rf"{url}/chat/completions is unreachable"):
        ServerJudge(url, "m", retries=3).score(["I am vegan."], ["Dinner?"], ["Soup."])
    assert time.perf_counter() - started < 2.0  # refused at once, not retried
    with pytest.raises(ConfigError, match="--judge-url must start with http"):
        ServerJudge("localhost:8000", "m")
    with pytest.raises(ConfigError, match="--judge-model is required"):
        ServerJudge("http://x/v1", "")


def test_eval_with_a_judge_server(
    serve: Callable[[Answer], _Server], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from mipo.cli import cli

    server = serve(rating_from_statement)
    heldout = tmp_path / "heldout.jsonl"
    rows = [
        {"user_id": f"u{i}", "context": c, "question": q}
        for i, (c, q) in enumerate(zip(CONTEXTS[:2] * 2, QUESTIONS[:2] * 2, strict=True))
    ]
    heldout.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    args = [
        "eval", "--model", str(tiny_model_dir), "--compare", str(tiny_model_dir),
        "--judge-url", server.url, "--judge-model", "served-judge", str(heldout),
        "--eval-max-new-tokens", "6", "-k", "2", "--n-bootstrap", "100", "-o", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    judged = metrics["judge"]["heldout"]
    assert metrics["models"]["judge"] == f"served-judge at {server.url}"
    # 2 + 1 preferences per context pair, 4 rows, 2 models: every rating asked once.
    assert judged["ratings_asked"] == {"model": 6, "baseline": 6}
    assert len(server.requests) == 12 and judged["unparsed"] == {"model": 0, "baseline": 0}
    # The same model on the same seeds: every comparison is a tie.
    assert judged["ties"] == 4 and judged["win_rate_ties_as_wins"] == 1.0
    report = (out / "report.md").read_text()
    assert "against each sentence of the user's context" in report
    bad = CliRunner().invoke(cli, [*args[:-2], "-o", str(tmp_path / "x"), "--judge", "m"])
    assert bad.exit_code == 2 and "exclude each other" in bad.output
