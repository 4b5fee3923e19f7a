"""A reward served elsewhere: an OpenAI-compatible chat endpoint (vLLM, SGLang) running a judge
model such as UnifiedReward, asked to rate each image against its prompt.

Requests go out concurrently, each with a timeout and retries. A request that still fails, or an
answer the parser cannot read, is not scored: its score is NaN and its ``failed`` component is 1,
and the engine leaves that sample out of the update (and counts it) instead of inventing a number.

The timeout is a deadline for the whole request (connecting, sending, and the whole answer), not for
each read, so a server that answers a byte at a time cannot hold a request longer. Answers are read
up to a size limit. Redirects are not followed: the API key goes to the configured server only.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import os
import re
import socket
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Literal

import numpy as np
import torch
from PIL import Image

from grpo.core.errors import UserError
from grpo.core.reward import RewardOutput
from grpo.core.schema import Doc, Range

TEMPLATES = {
    # Asks for one overall rating; parsed from "Final Score: X".
    "score": (
        "<image>\nRate how well this generated image matches its caption, and how good it looks. Consider "
        "whether every object, attribute, count and relation in the caption is shown, and the image's "
        "overall quality. Think briefly, then end with a line 'Final Score: X', where X is a number from "
        "1 (poor) to 5 (excellent).\nCaption: [{prompt}]",
        r"Final Score:\s*([1-5](?:\.\d+)?)",
    ),
    # Asks for the caption's alignment only; parsed from "Alignment Score (1-5): X".
    "semantic": (
        "<image>\nCheck this generated image against its caption word by word: say for each important word "
        "whether the image shows it. Then end with a line 'Alignment Score (1-5): X', where X is a number "
        "from 1 (nothing matches) to 5 (everything matches).\nCaption: [{prompt}]",
        r"Alignment Score \(1-5\):\s*([1-5](?:\.\d+)?)",
    ),
}


class HttpReward:
    """Scores images with a judge model behind an OpenAI-compatible `/v1/chat/completions` endpoint.

    The score is the parsed rating divided by `scale` (5: a rating of 5 scores 1.0, as Flow-GRPO).
    """

    media = "image"

    def __init__(
        self,
        *,
        url: Annotated[str, Doc("server base URL, e.g. http://10.0.0.5:17140 (…/v1/chat/completions is added)")] = "",
        model: Annotated[str, Doc("model name the server expects")] = "UnifiedReward",
        api_key_env: Annotated[str, Doc("environment variable holding the API key (empty: none)")] = "",
        template: Annotated[Literal["score", "semantic"], Doc("question asked, and how the answer is parsed")] = "score",
        image_format: Annotated[Literal["png", "jpeg"], Doc("how images are sent")] = "png",
        image_size: Annotated[int, Range(ge=0), Doc("images resized to this square size before sending (0: as is)")] = 512,
        timeout: Annotated[float, Range(gt=0), Doc("seconds for a first attempt")] = 30.0,
        timeout_step: Annotated[float, Range(ge=0), Doc("seconds more for each retry")] = 5.0,
        retries: Annotated[int, Range(ge=0), Doc("extra attempts after a failed request")] = 2,
        concurrency: Annotated[int, Range(ge=1), Doc("requests in flight at once")] = 16,
        max_tokens: Annotated[int, Range(ge=1), Doc("answer length limit")] = 1024,
        scale: Annotated[float, Range(gt=0), Doc("score = rating / scale")] = 5.0,
        max_answer_bytes: Annotated[int, Range(ge=1024), Doc("a longer answer fails the request")] = 4 * 2**20,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise UserError(f"expected an http(s) URL, got {url!r}", where="reward.url",
                            hint="the base URL of an OpenAI-compatible server, e.g. http://localhost:17140")
        self.endpoint = url.rstrip("/") + "/v1/chat/completions"
        self.max_answer_bytes = max_answer_bytes
        self.model, self.template, self.image_format, self.image_size = model, template, image_format, image_size
        self.timeout, self.timeout_step, self.retries, self.concurrency = timeout, timeout_step, retries, concurrency
        self.max_tokens, self.scale = max_tokens, scale
        self.api_key = ""
        if api_key_env:
            if api_key_env not in os.environ:
                raise UserError(f"environment variable {api_key_env} is not set", where="reward.api_key_env",
                                hint=f"export {api_key_env}=<the server's key>")
            self.api_key = os.environ[api_key_env]
        self.question, self.pattern = TEMPLATES[template]
        self.errors: list[str] = []  # why the last batch's failed requests failed

    def _encode(self, image: torch.Tensor) -> str:
        arr = (image.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        im = Image.fromarray(arr)
        if self.image_size:
            im = im.resize((self.image_size, self.image_size), Image.BICUBIC)
        buf = io.BytesIO()
        if self.image_format == "jpeg":
            im.save(buf, format="JPEG", quality=95)
        else:
            im.save(buf, format="PNG")
        return f"data:image/{self.image_format};base64," + base64.b64encode(buf.getvalue()).decode()

    def _ask(self, image: torch.Tensor, prompt: str) -> tuple[float, str]:
        """(score, "") or (NaN, why it failed)."""
        body = json.dumps({
            "model": self.model, "temperature": 0.0, "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": self._encode(image)}},
                {"type": "text", "text": self.question.format(prompt=prompt)},
            ]}],
        }).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        why = ""
        for attempt in range(self.retries + 1):
            try:
                answer = json.loads(self._post(body, headers, self.timeout + self.timeout_step * attempt))
                answer = answer["choices"][0]["message"]["content"]
            except (OSError, http.client.HTTPException, KeyError, IndexError, TypeError, ValueError) as e:
                why = f"{type(e).__name__}: {e}"
                time.sleep(min(0.5 * (attempt + 1), 2.0))
                continue
            found = re.search(self.pattern, answer or "")
            if found is None:
                return math.nan, f"no rating in the answer: {answer[:80]!r}"
            return float(found.group(1)) / self.scale, ""
        return math.nan, why

    def _post(self, body: bytes, headers: dict[str, str], seconds: float) -> bytes:
        """POST `body` to the endpoint; the answer's body. Fails (OSError) past `seconds` in all, on a
        redirect, an HTTP error status or an answer over ``max_answer_bytes``."""
        url = urllib.parse.urlsplit(self.endpoint)
        kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        conn = kind(url.hostname, url.port, timeout=seconds)
        late, held = threading.Event(), []

        def cut() -> None:  # the deadline: whatever the request is waiting for ends now
            late.set()
            for sock in held:  # the response may hold the socket after the connection let it go
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(seconds, cut)
        timer.daemon = True
        timer.start()
        try:
            conn.connect()
            held.append(conn.sock)
            conn.request("POST", url.path + (f"?{url.query}" if url.query else ""), body=body, headers=headers)
            response = conn.getresponse()
            if 300 <= response.status < 400:
                raise ConnectionError(f"the server redirected ({response.status}) to {response.getheader('Location')!r}, "
                                      "which is not followed: requests (and the API key) go to reward.url only")
            if response.status >= 400:
                raise ConnectionError(f"HTTP {response.status} {response.reason}")
            data = response.read(self.max_answer_bytes + 1)
            if len(data) > self.max_answer_bytes:
                raise ConnectionError(f"the answer is longer than max_answer_bytes = {self.max_answer_bytes}")
            if late.is_set():
                raise TimeoutError
            return data
        except (OSError, http.client.HTTPException) as e:
            if late.is_set():
                raise TimeoutError(f"timed out: no whole answer within {seconds:g} s") from None
            raise e
        finally:
            timer.cancel()
            conn.close()

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            results = list(pool.map(self._ask, list(images), list(prompts)))
        scores = torch.tensor([s for s, _ in results], dtype=torch.float32)
        self.errors = [why for _, why in results if why]
        return RewardOutput(scores, {"failed": (~torch.isfinite(scores)).float()})
