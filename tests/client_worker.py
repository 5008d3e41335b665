"""A serving app in its own process (for test_client.py): waits for a version, says when.

    python tests/client_worker.py BASE_URL TOKEN PROMPT VERSION
Prints "ready" once it serves a version, then "switched <epoch>" when it serves VERSION.
"""

from __future__ import annotations

import sys
import time

from bot.client import PromptClient

if __name__ == "__main__":
    base, token, prompt, wanted = sys.argv[1:5]
    with PromptClient(base, token, prompts=[prompt]) as client:
        print("ready", client.get(prompt).version, flush=True)
        while client.get(prompt).version != wanted:
            time.sleep(0.001)
        print("switched", f"{time.time():.4f}", flush=True)
