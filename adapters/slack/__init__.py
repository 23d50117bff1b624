"""The Slack bot: app.py wires it; settings.py holds its SLACK_* settings."""
