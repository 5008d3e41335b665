"""The serving client: `from bot.client import PromptClient`.

Keeps every prompt's routing in memory, updated by the bot's change stream, so `get()` is a
dictionary read; reports outcomes in the background. Nothing here raises into a request path
except `PromptUnavailable`, for a prompt it never knew and has no fallback for.
"""

from bot.client.client import PromptChoice, PromptClient, PromptUnavailable

__all__ = ["PromptChoice", "PromptClient", "PromptUnavailable"]
