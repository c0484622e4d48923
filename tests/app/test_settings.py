"""Settings from the environment: every variable documented, the README's table generated
from them, and a bad value refused with its variable's name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from app.core.settings import Settings, SettingsError, documented, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented():
    assert set(documented()) == {field.name for field in dataclasses.fields(Settings)}


def test_the_readme_lists_every_variable_as_the_settings_define_it():
    # Regenerate with `python -m app.core.settings` after changing a setting.
    assert markdown_table() in README.read_text()


def test_unset_and_empty_variables_take_the_defaults():
    assert Settings.from_env({}) == Settings.from_env({"PORT": "", "EMAIL_RATE_LIMIT": " "})
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DELIVERY_BATCH_SIZE": "0"}, "DELIVERY_BATCH_SIZE='0': Expected `int` >= 1"),
        ({"PORT": "eighty"}, "PORT='eighty': Expected `int`, got `str`"),
        ({"PORT": "70000"}, "PORT='70000': Expected `int` <= 65535"),
        ({"EVENTS_RETRY_HOURS": "12"}, "EVENTS_RETRY_HOURS='12': Expected `int` >= 24"),
        ({"EMAIL_RATE_LIMIT": "nan"}, "EMAIL_RATE_LIMIT='nan'"),
        ({"EMAIL_RATE_LIMIT": "inf"}, "EMAIL_RATE_LIMIT='inf'"),
        ({"SMS_RATE_LIMIT": "-1"}, "SMS_RATE_LIMIT='-1'"),
        ({"WEBHOOK_TIMEOUT_SECONDS": "1e400"}, "WEBHOOK_TIMEOUT_SECONDS='1e400'"),
        ({"SMS_PROVIDER": "smtp"}, "SMS_PROVIDER='smtp': Invalid enum value 'smtp'"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='LOUD'"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(env, message):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert str(caught.value).startswith(message), caught.value


def test_values_are_parsed_as_typed():
    settings = Settings.from_env(
        {
            "PORT": "9000",
            "EMAIL_RATE_LIMIT": "0.5",
            "MESSAGING_DEV_MODE": "yes",
            "LOG_LEVEL": "debug",
            "DELIVERY_RETENTION_DAYS": "30",
            "SMTP_STARTTLS": "always",
        }
    )
    assert (settings.port, settings.email_rate_limit, settings.dev_mode) == (9000, 0.5, True)
    assert (settings.log_level, settings.smtp_starttls) == ("DEBUG", "always")
    assert settings.delivery_retention_days == 30
