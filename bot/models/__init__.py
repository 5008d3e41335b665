"""Every table and API shape, in one place: the registry's and detection's."""

from bot.models.detection import *  # noqa: F403
from bot.models.registry import *  # noqa: F403
