"""A scripted judge for tests of the distillation tool and the Python API: as a generation engine
and as a local OpenAI-compatible HTTP server (a ``http.server`` thread on 127.0.0.1).

The judge "reads" the prompt and answers by fixed rules, so tests know each verdict in advance:

* ``MALFORMED`` anywhere in the prompt -> an unparseable final verdict (``\\boxed{3}`` / ``[[C]]``);
* ``ALWAYS1`` -> always Response 1 (a pure position bias);
* otherwise the response containing ``GOOD`` (Response 2 if ``GOOD`` appears after the
  Response-2 opening marker, else Response 1);
* ``FLAKY`` flips that verdict for odd sample indices.

Outputs are written by hand from the format contract (BR-RM turn 1 / turn 2 blocks, RM-R1
``<answer>[[A]]</answer>``), independent of the judge package's own formatter.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Optional

from megatron_brrm.rollout.engine import EngineAbilities, GenerationEngine, GenerationOutput, SamplingParams

TURN1 = ("[Quality Assessment Focus]\nInformation Accuracy\n[End of Quality Assessment Focus]\n\n"
         "[Quality Analysis for Response 1]\n- Critical Issues: checked.\n[End of Quality Analysis for Response 1]\n\n"
         "[Quality Analysis for Response 2]\n- Critical Issues: checked.\n[End of Quality Analysis for Response 2]")
TURN2 = ("[The Begin of Analysis on Response 1]\nfirst\n[The End of Analysis on Response 1]\n\n"
         "[The Begin of Analysis on Response 2]\nsecond\n[The End of Analysis on Response 2]\n\n"
         "[The Begin of Ranking Score]\n\\boxed{%s}\n[The End of Ranking Score]")
RMR1 = "<type>Chat</type>\n<rubric>be right</rubric>\n<eval>compared</eval>\n<answer>[[%s]]</answer>"
SECOND = {"brrm": "[The Begin of Response 2]", "rmr1": "[The Start of Chatbot B's Response]"}


def decide(prompt: str, sample_index: int, protocol: str) -> Optional[int]:
    """The verdict (1, 2, or None = malformed) the scripted judge gives (module docstring)."""
    if "MALFORMED" in prompt:
        return None
    if "ALWAYS1" in prompt:
        return 1
    cut = prompt.find(SECOND[protocol])
    verdict = 2 if cut >= 0 and "GOOD" in prompt[cut:] else 1
    if "FLAKY" in prompt and sample_index % 2 == 1:
        verdict = 3 - verdict
    return verdict


def final_text(verdict: Optional[int], protocol: str) -> str:
    """The final turn's text for ``verdict`` (None -> an unparseable verdict)."""
    if protocol == "rmr1":
        return RMR1 % ({1: "A", 2: "B"}.get(verdict, "C"))
    return TURN2 % (verdict if verdict is not None else 3)


def answer(prompt: str, turn: int, sample_index: int, protocol: str) -> str:
    """The scripted judge's text for 0-based ``turn`` of a conversation whose opening is ``prompt``."""
    if protocol == "brrm" and turn == 0:
        return TURN1
    return final_text(decide(prompt, sample_index, protocol), protocol)


class FakeJudgeEngine(GenerationEngine):
    """The scripted judge as a :class:`GenerationEngine` on a real tokenizer (ChatML template).

    The turn is read from the prompt (the number of ``<|im_start|>assistant`` headers); the
    answer is tokenized, followed by EOS for a turn that ends by itself (BR-RM turn 1 and any
    text that does not end on a stop string). Logprobs are zeros.
    """

    def __init__(self, tokenizer, protocol: str = "brrm"):
        self._tok = tokenizer
        self.protocol = protocol
        self.eos_token_ids = frozenset([tokenizer.eos_token_id])
        self.calls = 0

    @property
    def tokenizer(self):
        return self._tok

    @property
    def abilities(self) -> EngineAbilities:
        return EngineAbilities(eos_token_ids=self.eos_token_ids)

    def generate(self, prompts, params: SamplingParams, group_ids=None) -> List[List[GenerationOutput]]:
        self.calls += 1
        out = []
        for ids in prompts:
            text = self._tok.decode(ids, skip_special_tokens=False)
            turn = text.count("<|im_start|>assistant") - 1
            row = []
            for j in range(params.n):
                reply = answer(text, turn, j, self.protocol)
                toks = list(self._tok(reply, add_special_tokens=False)["input_ids"])
                if not any(reply.endswith(s) for s in params.stop):
                    toks.append(self._tok.eos_token_id)
                reason = "stop"
                if len(toks) > params.max_new_tokens:
                    toks, reason = toks[:params.max_new_tokens], "length"
                row.append(GenerationOutput(toks, self._tok.decode(toks, skip_special_tokens=False),
                                            [0.0] * len(toks), reason))
            out.append(row)
        return out

    def update_weights(self, named_tensors):
        raise NotImplementedError


class FakeChatServer:
    """The scripted judge behind ``POST /v1/chat/completions`` on 127.0.0.1 (a free port).

    The sample index is the request's ``seed`` (the teacher sends ``seed + k``, base 0); the
    turn is the number of assistant messages. After a BR-RM ranking block the server appends
    extra text (a server that ignores stop strings), which the client must cut. Every request
    body is kept in ``requests``. ``fail_first`` answers the first N requests with HTTP 503.
    Use as a context manager; ``url`` is the base URL (``http://127.0.0.1:<port>/v1``).
    """

    def __init__(self, protocol: str = "brrm", fail_first: int = 0):
        self.protocol = protocol
        self.requests: List[dict] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(body)
                    fail = outer.fail_first > 0
                    outer.fail_first -= int(fail)
                if self.path != "/v1/chat/completions" or fail:
                    self.send_response(503 if fail else 404)
                    self.end_headers()
                    self.wfile.write(b'{"error": "unavailable"}')
                    return
                msgs = body["messages"]
                prompt = "\n".join(m["content"] for m in msgs if m["role"] in ("system", "user"))
                turn = sum(m["role"] == "assistant" for m in msgs)
                text = answer(prompt, turn, int(body.get("seed", 0)), outer.protocol)
                if text.endswith("[The End of Ranking Score]"):
                    text += "\nand some words after the stop string"
                reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "FakeChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
