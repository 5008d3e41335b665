"""`python -m bot` is the same as `rollback-bot`."""

from bot.cli import main

main()
