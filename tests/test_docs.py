"""The README's commands are the ones CI runs, and the docs name every setting."""

from __future__ import annotations

from pathlib import Path

from bot.config import Settings

ROOT = Path(__file__).resolve().parent.parent
TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/pytest"
RUN_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/rollback-bot init "
    "&& .venv/bin/rollback-bot serve"
)


def test_readme_test_command_is_what_ci_runs() -> None:
    assert TEST_COMMAND in (ROOT / "README.md").read_text()
    assert TEST_COMMAND in (ROOT / ".ci/run").read_text()


DEMO_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/rollback-bot demo"
)


def test_readme_run_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert RUN_COMMAND in readme
    assert DEMO_COMMAND in readme


def test_every_setting_is_documented() -> None:
    reference = (ROOT / "docs/configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in reference, name


def test_socket_mode_manifest_is_the_http_one_without_urls() -> None:
    import yaml

    http = yaml.safe_load((ROOT / "manifest.yml").read_text())
    socket = yaml.safe_load((ROOT / "docs/manifest-socket-mode.yml").read_text())
    assert socket["settings"]["socket_mode_enabled"] is True
    assert "request_url" not in socket["settings"]["interactivity"]
    assert all("url" not in command for command in socket["features"]["slash_commands"])
    for command in http["features"]["slash_commands"]:
        del command["url"]
    del http["settings"]["interactivity"]["request_url"]
    http["settings"]["socket_mode_enabled"] = True
    assert socket == http


def test_slash_command_help_lists_every_usage() -> None:
    import yaml

    from bot.slack.blocks import HELP

    manifest = yaml.safe_load((ROOT / "manifest.yml").read_text())
    hints = " ".join(c["usage_hint"] for c in manifest["features"]["slash_commands"])
    for flag in ("--force", "--gradual", "--canary", "status", "history", "help"):
        assert flag in HELP and flag in hints, flag


def test_slack_gallery_is_what_the_builders_post() -> None:
    """docs/slack-gallery.md is regenerated from the real builders: a changed card, DM, dialog
    or draft must be regenerated (`python -m bot.demo.gallery > docs/slack-gallery.md`)."""
    from bot.demo.gallery import gallery

    page = (ROOT / "docs" / "slack-gallery.md").read_text(encoding="utf-8")
    assert page == gallery(), "regenerate: python -m bot.demo.gallery > docs/slack-gallery.md"
    # What the issue asked to be visible in it.
    for seen in (
        "[Acknowledge]",
        "acknowledged: <@U0ONCALL>",
        "Finish now asks first",
        "Roll back to: [v1.9.0 ▾]",
        "- *Verified*",
        "/archives/C0INCIDENTS/",
    ):
        assert seen in page, seen
    assert "**" not in page and "@@" not in page
