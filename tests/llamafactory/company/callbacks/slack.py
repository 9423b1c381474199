"""``callbacks.slack.notification``: ACME's Slack notifier (examples/company)."""

from acme_callbacks import SlackNotifier as notification

__all__ = ["notification"]
